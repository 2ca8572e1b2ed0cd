//! End to end: `esi-server policy compile|validate|explain|test` (issue 13) on the real
//! binary, and `explain`'s policy ids against the real server's audit lines for the same
//! requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://policy-cluster.example.com";

const FORBID_K2: &str = "// No one reads k2.\n@id(\"no-k2\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.key == \"k2\" };\n";

/// Federation `alpha` (static keys), a fake store with `k` and `k2`, a Password generator
/// and the Authorization `app` for `apps/app` on both.
fn world() -> String {
    static_federation(ISS, AUD)
        + r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: store}
spec:
  provider:
    fake:
      data:
        - {key: k, value: v1}
        - {key: k2, value: v2}
---
apiVersion: generators.external-secrets.io/v1alpha1
kind: Password
metadata: {name: pw, namespace: apps}
spec: {length: 24}
"# + &app_authorization(
        ISS,
        "  allowedClusterSecretStores: [store]\n  allowedGenerators:\n    - {name: pw, kind: Password, namespace: apps}\n",
    )
}

/// A directory with `manifests/` and `policies/`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new(manifests: &[(&str, &str)], policies: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        for (sub, files) in [("manifests", manifests), ("policies", policies)] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(sub).join(name), text).unwrap();
            }
        }
        Tree { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
}

/// Runs `esi-server policy <args> --manifests M --policies P`: (success, stdout, stderr).
fn policy(manifests: &Path, policies: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(server_bin())
        .arg("policy")
        .args(args)
        .arg("--manifests")
        .arg(manifests)
        .arg("--policies")
        .arg(policies)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tree_policy(tree: &Tree, args: &[&str]) -> (bool, String, String) {
    policy(&tree.path("manifests"), &tree.path("policies"), args)
}

fn explain_json(tree: &Tree, args: &[&str]) -> Value {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = tree_policy(tree, &all);
    assert!(ok, "{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn compile_prints_every_policy_with_the_ids_decisions_report() {
    let world = world();
    let tree = Tree::new(
        &[("world.yaml", &world)],
        &[
            ("no-k2.cedar", FORBID_K2),
            (
                "extra.cedar",
                "permit (principal in Esi::Namespace::\"alpha/ops\", action, resource);\n",
            ),
        ],
    );
    let (ok, out, err) = tree_policy(&tree, &["compile"]);
    assert!(ok, "{out}\n{err}");
    for expected in [
        "@id(\"authorization/app/stores\")",
        "@id(\"authorization/app/generators\")",
        "@id(\"no-k2\")",
        // A policy without @id is named after its file and place.
        "@id(\"extra/0\")",
        "// Authorization/app (",
        "world.yaml#",
        "no-k2.cedar",
    ] {
        assert!(out.contains(expected), "{expected}:\n{out}");
    }
    // Compiled first (by Authorization), then the files.
    let at = |s: &str| out.find(s).unwrap();
    assert!(at("authorization/app/stores") < at("authorization/app/generators"));
    assert!(at("authorization/app/generators") < at("@id(\"extra/0\")"));

    let (ok, out, _) = tree_policy(&tree, &["compile", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        ids.contains(&"no-k2") && ids.contains(&"extra/0"),
        "{ids:?}"
    );
}

#[test]
fn validate_points_at_file_and_line_and_fails() {
    let good = world();
    let tree = Tree::new(&[("world.yaml", &good)], &[("no-k2.cedar", FORBID_K2)]);
    let (ok, out, err) = tree_policy(&tree, &["validate"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 errors"), "{out}");

    // A schema error on line 3 of a .cedar file, and an Authorization naming a store
    // and a federation that do not exist.
    let dangling = good.clone()
        + r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: typo}
spec:
  federationRef: {kind: KubernetesFederation, name: alpah}
  subject: {oidc: {issuer: https://x.example, subject: "system:serviceaccount:apps:app"}}
  allowedClusterSecretStores: [stroe]
"#;
    let lines_before = good.lines().count();
    let tree = Tree::new(
        &[("world.yaml", &dangling)],
        &[(
            "bad.cedar",
            "// line 1\npermit (principal, action, resource)\nwhen { principal.nope == \"x\" };\n",
        )],
    );
    let (ok, out, err) = tree_policy(&tree, &["validate"]);
    assert!(!ok, "{out}");
    assert!(err.contains("validation failed"), "{err}");
    let cedar = format!("{}:3:", tree.path("policies/bad.cedar").display());
    assert!(out.contains(&cedar), "{cedar}:\n{out}");
    assert!(out.contains("principal.nope"), "{out}");
    let world_file = tree.path("manifests/world.yaml").display().to_string();
    let store_line = format!("{world_file}:{}:", lines_before + 8);
    let fed_line = format!("{world_file}:{}:", lines_before + 6);
    assert!(
        out.contains("ClusterSecretStore stroe does not exist"),
        "{out}"
    );
    assert!(out.contains(&store_line), "{store_line}:\n{out}");
    assert!(
        out.contains("KubernetesFederation alpah does not exist"),
        "{out}"
    );
    assert!(out.contains(&fed_line), "{fed_line}:\n{out}");
    assert!(out.contains("^^^^^"), "{out}");

    let (ok, out, _) = tree_policy(&tree, &["validate", "--json"]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&out).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["span"]["line"] == 3 && p["file"].as_str().unwrap().ends_with("bad.cedar")),
        "{out}"
    );

    // `check` loads the same way: it fails on the bad file (a load error) and shows the
    // missing references as warnings.
    let out = Command::new(server_bin())
        .arg("check")
        .arg("--manifests")
        .arg(tree.path("manifests"))
        .arg("--policies")
        .arg(tree.path("policies"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("error: ") && text.contains("bad.cedar"),
        "{text}"
    );
    assert!(
        text.contains("warning: ") && text.contains("stroe"),
        "{text}"
    );
    assert!(text.contains("1 errors"), "{text}");
}

#[test]
fn explain_names_the_determining_policies() {
    let world = world();
    let tree = Tree::new(&[("world.yaml", &world)], &[("no-k2.cedar", FORBID_K2)]);
    let base = ["--principal", "alpha/apps/app"];

    let allowed = explain_json(
        &tree,
        &[&base[..], &["--store", "store", "--key", "k"]].concat(),
    );
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["policies"], json!(["authorization/app/stores"]));
    assert_eq!(allowed["resource"], "key:store/k");
    assert_eq!(allowed["determining"][0]["source"], "Authorization/app");

    let forbidden = explain_json(
        &tree,
        &[&base[..], &["--store", "store", "--key", "k2"]].concat(),
    );
    assert_eq!(forbidden["decision"], "deny");
    assert_eq!(forbidden["policies"], json!(["no-k2"]));
    assert_eq!(forbidden["determining"][0]["effect"], "forbid");

    let other = explain_json(
        &tree,
        &[
            "--principal",
            "alpha/apps/other",
            "--generator",
            "apps/Password/pw",
        ],
    );
    assert_eq!(other["decision"], "deny");
    assert_eq!(other["policies"], json!([]));
    assert!(
        other["notes"][0]
            .as_str()
            .unwrap()
            .contains("denied by default")
    );

    // Text form.
    let (ok, out, _) = tree_policy(
        &tree,
        &[
            "explain",
            "--principal",
            "alpha/apps/app",
            "--store",
            "store",
            "--key",
            "k2",
        ],
    );
    assert!(ok);
    assert!(out.starts_with("decision: DENY\n"), "{out}");
    assert!(out.contains("determining policies: no-k2"), "{out}");
    assert!(out.contains("@id(\"no-k2\")"), "{out}");

    // A malformed principal is an error, not a decision.
    let (ok, _, err) = tree_policy(
        &tree,
        &["explain", "--principal", "alpha/app", "--find", "store"],
    );
    assert!(!ok);
    assert!(err.contains("FEDERATION/NAMESPACE/SERVICEACCOUNT"), "{err}");
}

#[test]
fn explain_token_says_whether_it_was_verified() {
    const ISS2: &str = "https://fetching-cluster.example.com";
    // `beta` fetches its keys from its url: nothing can verify its tokens offline.
    let world = world()
        + &format!(
            r#"---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: KubernetesFederation
metadata: {{name: beta}}
spec:
  url: https://127.0.0.1:9
  issuer: {ISS2}
  audiences: ["{AUD}"]
"#
        );
    let tree = Tree::new(&[("world.yaml", &world)], &[]);
    let token_file = tree.dir.path().join("token");

    std::fs::write(
        &token_file,
        mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None),
    )
    .unwrap();
    let token = token_file.to_str().unwrap();
    let verified = explain_json(&tree, &["--token", token, "--store", "store", "--key", "k"]);
    assert_eq!(verified["token_verified"], true);
    assert_eq!(verified["decision"], "allow");
    assert_eq!(verified["principal"]["pod_name"], "app-pod");

    std::fs::write(
        &token_file,
        mint("ec-1", &sa_claims(ISS2, AUD, "apps", "app"), None),
    )
    .unwrap();
    let unverified = explain_json(&tree, &["--token", token, "--find", "store"]);
    assert_eq!(unverified["token_verified"], false);
    assert_eq!(unverified["principal"]["federation"], "beta");
    let notes = unverified["notes"].to_string();
    assert!(notes.contains("NOT VERIFIED"), "{notes}");
    let (ok, out, _) = tree_policy(&tree, &["explain", "--token", token, "--find", "store"]);
    assert!(ok);
    assert!(out.contains("token: NOT VERIFIED"), "{out}");

    // A token the server would refuse (signed by a key alpha does not trust) is refused.
    std::fs::write(
        &token_file,
        mint("ec-2", &sa_claims(ISS, AUD, "apps", "app"), None),
    )
    .unwrap();
    let (ok, _, err) = tree_policy(&tree, &["explain", "--token", token, "--find", "store"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["kind"] == "decision")
        .collect()
}

/// The ids `explain` shows are those of the server's decision (audit) line for the same
/// request: allowed, forbidden, a generator, default deny; by principal and by token.
#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_servers_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = Server::start_with_args(
        &[("world.yaml", world())],
        &[("no-k2.cedar", FORBID_K2)],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let token = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let requests: [(&str, u16, Vec<&str>); 4] = [
        (
            "/secretstore/store/secrets/k",
            200,
            vec!["--store", "store", "--key", "k"],
        ),
        (
            "/secretstore/store/secrets/k2",
            404,
            vec!["--store", "store", "--key", "k2"],
        ),
        (
            "/generators/apps/Password/pw",
            200,
            vec!["--generator", "apps/Password/pw"],
        ),
        (
            "/secretstore/nosuch/secrets/k",
            404,
            vec!["--store", "nosuch", "--key", "k"],
        ),
    ];
    for (i, (path, status, args)) in requests.iter().enumerate() {
        let (got, body) = server.post(path, Some(&token), json!({})).await;
        assert_eq!(got, *status, "{path}: {body}");
        let lines = audit_lines(&audit);
        assert_eq!(lines.len(), i + 1, "{lines:?}");
        let line = &lines[i];
        for who in [
            vec!["--principal", "alpha/apps/app"],
            vec!["--token", token_file.to_str().unwrap()],
        ] {
            let mut all = vec!["explain", "--json"];
            all.extend(&who);
            all.extend(args);
            let (ok, out, err) = policy(&server.manifests, &server.policies, &all);
            assert!(ok, "{out}\n{err}");
            let explained: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                explained["policies"], line["policies"],
                "{path} {who:?}: {line}"
            );
            assert_eq!(explained["decision"], line["decision"], "{path}: {line}");
            assert_eq!(explained["resource"], line["resource"], "{path}: {line}");
            assert_eq!(explained["action"], line["action"], "{path}: {line}");
        }
    }
    let ids: Vec<Value> = audit_lines(&audit)
        .iter()
        .map(|l| l["policies"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            json!(["authorization/app/stores"]),
            json!(["no-k2"]),
            json!(["authorization/app/generators"]),
            json!([]),
        ]
    );
}

#[test]
fn policy_test_runs_the_examples_and_shows_failures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The repository's examples (policies/tests over policies/examples): run in CI here.
    let out = Command::new(server_bin())
        .args(["policy", "test", "--manifests"])
        .arg(root.join("policies/tests/manifests"))
        .arg("--policies")
        .arg(root.join("policies/examples"))
        .arg(root.join("policies/tests"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");

    // A failing case: the wrong decision and the wrong ids, shown as a diff.
    let world = world();
    let tree = Tree::new(&[("world.yaml", &world)], &[("no-k2.cedar", FORBID_K2)]);
    let cases = tree.dir.path().join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    std::fs::write(
        cases.join("a.yaml"),
        r#"cases:
  - name: reads k
    principal: alpha/apps/app
    action: get
    resource: {store: store, key: k}
    expect: allow
    policies: [authorization/app/stores]
  - name: reads k2 (wrong on purpose)
    principal: alpha/apps/app
    action: get
    resource: {store: store, key: k2}
    expect: allow
"#,
    )
    .unwrap();
    let (ok, out, err) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains("1 cases failed"), "{err}");
    assert!(out.contains("ok    "), "{out}");
    assert!(out.contains("a.yaml:2  reads k\n"), "{out}");
    assert!(out.contains("FAIL  "), "{out}");
    assert!(out.contains("a.yaml:8  reads k2"), "{out}");
    assert!(out.contains("- expected: allow"), "{out}");
    assert!(out.contains("+ actual:   deny by no-k2"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");

    // A context the server never passes is refused, not silently ignored.
    std::fs::write(
        cases.join("a.yaml"),
        "cases:\n  - name: ctx\n    principal: alpha/apps/app\n    action: find\n    resource: {store: store}\n    context: {sourceIp: 10.0.0.1}\n    expect: deny\n",
    )
    .unwrap();
    let (ok, _, err) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("context must be empty"), "{err}");
}

/// Issue 18: the tools work for OIDC federations: `compile` shows Authorizations compiled
/// for `Esi::OidcSubject`, `validate` checks claim reads against the claims the federations
/// list (and warns about a file written for ServiceAccounts only), `explain` takes
/// `FEDERATION/SUBJECT` with `--claim`, and `test` cases carry `claims`.
#[test]
fn the_tools_serve_oidc_subjects() {
    let gh = "https://token.actions.githubusercontent.com";
    let manifests = format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: github}}
spec:
  issuer: {gh}
  audiences: [{AUD}]
  boundClaims: {{repository_owner: org}}
  claims: [repository, environment]
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: store}}
spec: {{provider: {{fake: {{data: [{{key: prod/db, value: v}}]}}}}}}
---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: deploy}}
spec:
  federationRef: {{kind: OIDCFederation, name: github}}
  subject: {{oidc: {{issuer: "{gh}", subject: "repo:org/*"}}}}
  allowedClusterSecretStores: [store]
"#
    );
    let prod_only = "@id(\"prod-from-production\")\nforbid (principal is Esi::OidcSubject, action, resource is Esi::RemoteKey)\nwhen { resource.key like \"prod/*\" }\nunless { principal.claims has environment && principal.claims.environment == \"production\" };\n";
    let old = "forbid (principal, action, resource) when { principal.namespace == \"sandbox\" };\n";
    let tree = Tree::new(
        &[("m.yaml", &manifests)],
        &[("ci.cedar", prod_only), ("old.cedar", old)],
    );
    let (m, p) = (tree.path("manifests"), tree.path("policies"));
    let (ok, out, err) = policy(&m, &p, &["compile"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(r#"permit(principal is Esi::OidcSubject in Esi::Federation::"github""#),
        "{out}"
    );
    let (ok, out, err) = policy(&m, &p, &["validate"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("valid for ServiceAccount callers only") && out.contains("old.cedar"),
        "{out}"
    );
    assert!(out.contains("0 errors, 1 warnings"), "{out}");
    let explain = |m: &Path, p: &Path, env: &str| {
        let claim = format!("--claim=environment={env}");
        policy(
            m,
            p,
            &[
                "explain",
                "--principal",
                "github/repo:org/app:environment:prod",
                &claim,
                "--claim=repository=org/app",
                "--store",
                "store",
                "--key",
                "prod/db",
            ],
        )
    };
    // The ServiceAccount-only file fails to evaluate for an OIDC subject: its forbid denies.
    let (ok, out, err) = explain(&m, &p, "production");
    assert!(ok, "{err}");
    assert!(out.starts_with("decision: DENY"), "{out}");
    assert!(out.contains("OidcSubject of federation github"), "{out}");
    assert!(out.contains("determining policies: old/0"), "{out}");
    // Without it, the claim decides.
    let tree = Tree::new(&[("m.yaml", &manifests)], &[("ci.cedar", prod_only)]);
    let (m, p) = (tree.path("manifests"), tree.path("policies"));
    let (_, out, _) = explain(&m, &p, "production");
    assert!(out.starts_with("decision: ALLOW"), "{out}");
    let (_, out, _) = explain(&m, &p, "staging");
    assert!(out.starts_with("decision: DENY"), "{out}");
    assert!(out.contains("prod-from-production"), "{out}");
    // The same in a test case.
    let cases = tree.dir.path().join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    std::fs::write(
        cases.join("ci.yaml"),
        "cases:\n  - name: staging jobs do not read prod keys\n    principal: github/repo:org/app:environment:staging\n    claims: {environment: staging}\n    action: get\n    resource: {store: store, key: prod/db}\n    expect: deny\n    policies: [prod-from-production]\n",
    )
    .unwrap();
    let out = Command::new(server_bin())
        .args(["policy", "test", "--manifests"])
        .arg(&m)
        .arg("--policies")
        .arg(&p)
        .arg(&cases)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
