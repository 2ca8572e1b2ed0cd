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
    let (code, out, err) = policy_status(manifests, policies, args);
    (code == Some(0), out, err)
}

/// As [`policy`], with the exit code.
fn policy_status(
    manifests: &Path,
    policies: &Path,
    args: &[&str],
) -> (Option<i32>, String, String) {
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
        out.status.code(),
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
    // Review finding: an unverified token's decision read `decision: ALLOW` first. It is
    // now `unverified-…` from the first line, and the exit code (3) says so too.
    let (code, out, err) = policy_status(
        &tree.path("manifests"),
        &tree.path("policies"),
        &["explain", "--json", "--token", token, "--find", "store"],
    );
    assert_eq!(code, Some(3), "{out}\n{err}");
    let unverified: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(unverified["token_verified"], false);
    assert!(
        unverified["decision"]
            .as_str()
            .is_some_and(|d| d.starts_with("unverified-")),
        "{unverified}"
    );
    assert_eq!(unverified["principal"]["federation"], "beta");
    let notes = unverified["notes"].to_string();
    assert!(notes.contains("NOT VERIFIED"), "{notes}");
    let (code, out, _) = policy_status(
        &tree.path("manifests"),
        &tree.path("policies"),
        &["explain", "--token", token, "--find", "store"],
    );
    assert_eq!(code, Some(3));
    assert!(out.starts_with("decision: UNVERIFIED-"), "{out}");
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
/// request, for every action the server decides: `get` allowed, forbidden and default deny,
/// `generate` on a Generator and on a ClusterGenerator (decided as
/// `<cluster>/ClusterGenerator/<name>` whatever namespace the path spells), and `find`
/// (decided on the store; the `get` of each key it returns is decided after it, like a
/// `get`); by principal and by token.
#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_servers_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    const CLUSTER_GENERATOR: &str = r#"apiVersion: generators.external-secrets.io/v1alpha1
kind: ClusterGenerator
metadata: {name: cpw}
spec:
  kind: Password
  generator:
    passwordSpec: {length: 12}
"#;
    const CLUSTER_PERMIT: &str = "@id(\"cluster-pw\")\npermit (principal in Esi::Namespace::\"alpha/apps\", action == Esi::Action::\"generate\", resource == Esi::Generator::\"<cluster>/ClusterGenerator/cpw\");\n";
    let server = Server::start_with_args(
        &[
            ("world.yaml", world()),
            ("cluster.yaml", CLUSTER_GENERATOR.to_owned()),
        ],
        &[
            ("no-k2.cedar", FORBID_K2),
            ("cluster.cedar", CLUSTER_PERMIT),
        ],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let token = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    // (path, body, status, explain flags, decision lines the request writes).
    let requests: [(&str, Value, u16, Vec<&str>, usize); 6] = [
        (
            "/secretstore/store/secrets/k",
            json!({}),
            200,
            vec!["--store", "store", "--key", "k"],
            1,
        ),
        (
            "/secretstore/store/secrets/k2",
            json!({}),
            404,
            vec!["--store", "store", "--key", "k2"],
            1,
        ),
        (
            "/generators/apps/Password/pw",
            json!({}),
            200,
            vec!["--generator", "apps/Password/pw"],
            1,
        ),
        (
            "/generators/apps/ClusterGenerator/cpw",
            json!({}),
            200,
            vec!["--generator", "apps/ClusterGenerator/cpw"],
            1,
        ),
        // The find, then the `get` of the one key it matches.
        (
            "/v1/secretstore/store/find",
            json!({"find": {"name": {"regexp": "^k$"}}}),
            200,
            vec!["--find", "store"],
            2,
        ),
        (
            "/secretstore/nosuch/secrets/k",
            json!({}),
            404,
            vec!["--store", "nosuch", "--key", "k"],
            1,
        ),
    ];
    let mut first_lines = Vec::new();
    for (path, body, status, args, written) in &requests {
        let before = audit_lines(&audit).len();
        let (got, text) = server.post(path, Some(&token), body.clone()).await;
        assert_eq!(got, *status, "{path}: {text}");
        let lines = audit_lines(&audit);
        assert_eq!(lines.len(), before + written, "{path}: {lines:?}");
        // The request's own decision is its first line.
        let line = lines[before].clone();
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
        first_lines.push(line);
    }
    let decided: Vec<(Value, Value)> = first_lines
        .iter()
        .map(|l| (l["action"].clone(), l["policies"].clone()))
        .collect();
    assert_eq!(
        decided,
        [
            (json!("get"), json!(["authorization/app/stores"])),
            (json!("get"), json!(["no-k2"])),
            (json!("generate"), json!(["authorization/app/generators"])),
            (json!("generate"), json!(["cluster-pw"])),
            (json!("find"), json!(["authorization/app/stores"])),
            (json!("get"), json!([])),
        ]
    );
}

/// Review finding 5 (issue 13): objects of our API groups the loader does not know (a kind
/// typo, a version no CRD serves) are errors at their line; files the directory loader
/// skips silently (hidden, wrong-case extension, too deep, a dangling symlink) are named.
#[test]
fn validate_names_unknown_kinds_and_skipped_files() {
    let good = world();
    let unknown = good.clone()
        + "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorisation\nmetadata: {name: typo}\nspec: {}\n---\napiVersion: federation.external-secrets.io/v1\nkind: Authorization\nmetadata: {name: later}\nspec:\n  federationRef: {kind: KubernetesFederation, name: alpha}\n  subject: {oidc: {issuer: https://x.example, subject: \"system:serviceaccount:apps:app\"}}\n";
    let lines_before = good.lines().count();
    let tree = Tree::new(
        &[("world.yaml", &unknown)],
        &[
            ("no-k2.cedar", FORBID_K2),
            (".hidden.cedar", FORBID_K2),
            ("SHOUT.CEDAR", FORBID_K2),
        ],
    );
    std::fs::write(tree.path("manifests/more.YAML"), &good).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        tree.path("manifests/gone.yaml"),
        tree.path("manifests/link.yaml"),
    )
    .unwrap();
    let mut deep = tree.path("manifests");
    for level in 1..=16 {
        deep = deep.join(format!("l{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let (ok, out, err) = tree_policy(&tree, &["validate"]);
    assert!(!ok, "{out}");
    assert!(err.contains("validation failed: 2 errors"), "{err}\n{out}");
    let world_file = tree.path("manifests/world.yaml").display().to_string();
    assert!(
        out.contains(
            "error: Authorisation/typo: unknown kind Authorisation in federation.external-secrets.io"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!("{world_file}:{}:", lines_before + 3)),
        "{out}"
    );
    assert!(
        out.contains("error: Authorization/later: apiVersion federation.external-secrets.io/v1 is not served for Authorization (federation.external-secrets.io/v1alpha1)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{world_file}:{}:", lines_before + 7)),
        "{out}"
    );
    for (path, reason) in [
        ("policies/.hidden.cedar", "hidden file"),
        ("policies/SHOUT.CEDAR", "extension .CEDAR"),
        ("manifests/more.YAML", "extension .YAML"),
        (
            "manifests/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12/l13/l14/l15/l16",
            "deeper than the loader's limit of 16 levels",
        ),
        #[cfg(unix)]
        ("manifests/link.yaml", "symlink that does not resolve"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&*tree.path(path).display().to_string()))
            .unwrap_or_else(|| panic!("{path}:\n{out}"));
        assert!(
            line.starts_with("warning: ")
                && line.contains(": not loaded: ")
                && line.contains(reason),
            "{path}: {reason}:\n{out}"
        );
    }
}

/// Review finding 8 (issue 13): user text with escape sequences (a `.cedar` `@id`, an
/// object name) reaches the terminal escaped, never as it is; a name Kubernetes would
/// refuse is refused at load.
#[test]
fn policy_output_escapes_control_characters() {
    // (`@id`s are printable ASCII, refused otherwise by the engine: the file name and a
    // string literal carry the escape here.)
    let evil_cedar = "// comment \u{1b}[2J\n@id(\"evil\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.key == \"k2\" || resource.key == \"x\u{1b}[2Jy\" };\n";
    let tree = Tree::new(
        &[("world.yaml", &world())],
        &[("e\u{1b}[2Jvil.cedar", evil_cedar)],
    );
    let cases = tree.dir.path().join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    std::fs::write(
        cases.join("a.yaml"),
        "cases:\n  - name: \"case \\e[2J name\"\n    principal: alpha/apps/app\n    action: get\n    resource: {store: store, key: k2}\n    expect: allow\n",
    )
    .unwrap();
    let raw = |s: &str| s.contains('\u{1b}');
    for args in [
        vec!["compile"],
        vec![
            "explain",
            "--principal",
            "alpha/apps/app",
            "--store",
            "store",
            "--key",
            "k2",
        ],
        vec!["test", cases.to_str().unwrap()],
    ] {
        let (_, out, err) = tree_policy(&tree, &args);
        assert!(!raw(&out) && !raw(&err), "{args:?}: {out:?} {err:?}");
        assert!(out.contains("evil"), "{args:?}: {out}");
        if args[0] != "test" {
            assert!(out.contains("e\\u{1b}[2Jvil.cedar"), "{args:?}: {out}");
        }
    }
    let (_, out, _) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(out.contains("case \\u{1b}[2J name"), "{out}");

    // An object whose name Kubernetes would refuse is refused at load, its name escaped.
    let evil_name = world()
        + "---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {name: \"a\\e[2Jb\"}\nspec: {provider: {fake: {data: []}}}\n";
    let tree = Tree::new(&[("world.yaml", &evil_name)], &[]);
    let (ok, out, err) = tree_policy(&tree, &["validate"]);
    assert!(!ok, "{out}");
    assert!(!raw(&out) && !raw(&err), "{out:?} {err:?}");
    assert!(
        out.contains("metadata.name \"a\\u{1b}[2Jb\" is not a DNS-1123 subdomain"),
        "{out}"
    );
}

/// Review finding 10 (issue 13): `explain` and `test` refuse a principal no token can
/// carry (a `:` or an extra `/`), instead of deciding for it.
#[test]
fn principals_no_token_can_carry_are_refused() {
    let tree = Tree::new(&[("world.yaml", &world())], &[]);
    for (bad, says) in [
        (
            "alpha/apps/app/extra",
            "FEDERATION/NAMESPACE/SERVICEACCOUNT (three parts)",
        ),
        (
            "alpha/apps:x/app",
            "namespace \"apps:x\" is not a Kubernetes namespace name",
        ),
    ] {
        let (ok, out, err) = tree_policy(
            &tree,
            &[
                "explain",
                "--principal",
                bad,
                "--store",
                "store",
                "--key",
                "k",
            ],
        );
        assert!(!ok, "{bad}: {out}");
        assert!(err.contains(says), "{bad}: {err}");
        let cases = tree.dir.path().join("cases");
        std::fs::create_dir_all(&cases).unwrap();
        std::fs::write(
            cases.join("a.yaml"),
            format!("cases:\n  - name: c\n    principal: \"{bad}\"\n    action: get\n    resource: {{store: store, key: k}}\n    expect: deny\n"),
        )
        .unwrap();
        let (ok, out, err) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
        assert!(!ok, "{bad}: {out}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

/// `explain --source-address IP --time RFC3339` decides in that context (Cedar's
/// `context.sourceAddress`, `context.time`), over the repository's examples
/// (policies/examples/context-network-and-window.cedar).
#[test]
fn explain_decides_in_the_context_given() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (manifests, policies) = (
        root.join("policies/tests/manifests"),
        root.join("policies/examples"),
    );
    let explain = |who: &str, extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--json",
            "--principal",
            who,
            "--store",
            "vault-prod",
            "--key",
            "db/password",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = policy(&manifests, &policies, &args);
        assert!(ok, "{args:?}: {out}{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let app = "cluster-main/apps/app";
    let inside = explain(app, &["--source-address", "::ffff:10.2.3.4"]);
    assert_eq!(inside["decision"], "allow", "{inside}");
    assert_eq!(inside["context"]["sourceAddress"], "10.2.3.4", "{inside}");
    let outside = explain(app, &["--source-address", "192.0.2.10"]);
    assert_eq!(outside["decision"], "deny", "{outside}");
    assert_eq!(outside["policies"], json!(["prod-only-from-node-network"]));
    // No address given: none in the context, as for a request without one.
    let none = explain(app, &[]);
    assert_eq!(none["decision"], "allow", "{none}");
    assert!(none["context"].get("sourceAddress").is_none(), "{none}");

    let deployer = "cluster-main/ops/deployer";
    let window = explain(deployer, &["--time", "2026-12-24T23:30:00Z"]);
    assert_eq!(window["decision"], "allow", "{window}");
    assert_eq!(
        window["policies"],
        json!(["ops-deployer-maintenance-window"])
    );
    assert_eq!(window["context"]["time"], "2026-12-24T23:30:00Z");
    let after = explain(deployer, &["--time", "2026-12-25T02:00:00Z"]);
    assert_eq!(after["decision"], "deny", "{after}");

    let (ok, out, _) = policy(
        &manifests,
        &policies,
        &[
            "explain",
            "--principal",
            deployer,
            "--store",
            "vault-prod",
            "--key",
            "db/password",
            "--time",
            "2026-12-24T23:30:00Z",
            "--source-address",
            "10.0.0.7",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("context: time 2026-12-24T23:30:00Z, sourceAddress 10.0.0.7\n"),
        "{out}"
    );
    for (flag, bad, says) in [
        (
            "--time",
            "yesterday",
            "--time \"yesterday\" is not an RFC 3339 time",
        ),
        (
            "--source-address",
            "nowhere",
            "--source-address \"nowhere\" is not an IP address",
        ),
    ] {
        let (ok, _, err) = policy(
            &manifests,
            &policies,
            &[
                "explain",
                "--principal",
                app,
                "--find",
                "vault-prod",
                flag,
                bad,
            ],
        );
        assert!(!ok);
        assert!(err.contains(says), "{err}");
    }
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

    // Review finding 4: a store typo (404) or an unknown federation (401) is not a denial:
    // `expect: deny` fails, naming what the server answers; `expectStatus` passes.
    let refused = "cases:\n  - name: typo\n    principal: alpha/apps/app\n    action: get\n    resource: {store: stroe, key: k}\n    expect: deny\n  - name: no such federation\n    principal: beta/apps/app\n    issuer: https://beta.example\n    action: get\n    resource: {store: store, key: k}\n    expect: deny\n";
    std::fs::write(cases.join("a.yaml"), refused).unwrap();
    let (ok, out, _) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("+ actual:   status 404: store stroe (ClusterSecretStore) does not exist; the server would answer 404"),
        "{out}"
    );
    assert!(
        out.contains("+ actual:   status 401: federation beta does not exist"),
        "{out}"
    );
    assert!(out.contains("0 passed, 2 failed"), "{out}");
    std::fs::write(
        cases.join("a.yaml"),
        refused
            .replacen("expect: deny", "expectStatus: 404", 1)
            .replacen("expect: deny", "expectStatus: 401", 1),
    )
    .unwrap();
    let (ok, out, err) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");

    // A context attribute the server never passes is refused, not silently ignored.
    std::fs::write(
        cases.join("a.yaml"),
        "cases:\n  - name: ctx\n    principal: alpha/apps/app\n    action: find\n    resource: {store: store}\n    context: {sourceIp: 10.0.0.1}\n    expect: deny\n",
    )
    .unwrap();
    let (ok, _, err) = tree_policy(&tree, &["test", cases.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("case \"ctx\": context.sourceIp: unknown"),
        "{err}"
    );
}

/// An Authorization `name` of federation `alpha` for `subject` (after a `---` line),
/// granting `grants` (YAML lines under `spec`).
fn authorization(name: &str, subject: &str, grants: &str) -> String {
    format!(
        "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: KubernetesFederation, name: alpha}}\n  subject: {{oidc: {{issuer: {ISS}, subject: \"{subject}\"}}}}\n{grants}"
    )
}

/// A fake ClusterSecretStore `name` (after a `---` line).
fn fake_store(name: &str) -> String {
    format!(
        "---\napiVersion: external-secrets.io/v1\nkind: ClusterSecretStore\nmetadata: {{name: {name}}}\nspec:\n  provider:\n    fake:\n      data:\n        - {{key: k, value: v}}\n"
    )
}

/// The 1-based line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
}

const FORBID_ADMIN: &str = "@id(\"no-admin\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.key like \"admin/*\" };\n";

/// `lint`: one case per rule, each with its file and line; exit 0 with warnings, 1 with
/// --deny-warnings or on an error; `--json`.
#[test]
fn lint_reports_each_rule_with_file_and_line() {
    let idle = format!(
        "---\napiVersion: identity.federation.external-secrets.io/v1alpha1\nkind: KubernetesFederation\nmetadata: {{name: idle}}\nspec:\n  issuer: https://idle.example\n  audiences: [\"{AUD}\"]\n  jwks: '{}'\n",
        jwks(&["ec-1"])
    );
    let world = static_federation(ISS, AUD)
        + &idle
        + &fake_store("main")
        + &fake_store("restricted")
        + &fake_store("orphan")
        + &authorization(
            "team",
            "system:serviceaccount:team:*",
            "  allowedClusterSecretStores: [restricted]\n  allowedRemoteKeys: {restricted: [db/*]}\n",
        )
        + &authorization(
            "app",
            "system:serviceaccount:apps:app",
            "  allowedClusterSecretStores: [main, restricted]\n",
        )
        + &authorization(
            "everyone",
            "system:serviceaccount:*",
            "  allowedClusterSecretStores: [main]\n",
        )
        + &authorization(
            "admins",
            "system:serviceaccount:ops:admin",
            "  allowedClusterSecretStores: [restricted]\n  allowedRemoteKeys: {restricted: [admin/*]}\n",
        );
    let wide = "// Any ServiceAccount of alpha may list `restricted`.\npermit (principal in Esi::Federation::\"alpha\", action == Esi::Action::\"find\", resource == Esi::Store::\"restricted\");\n";
    let tree = Tree::new(
        &[("world.yaml", &world)],
        &[("no-admin.cedar", FORBID_ADMIN), ("wide.cedar", wide)],
    );
    let file = tree.path("manifests/world.yaml").display().to_string();
    let at = |needle: &str| format!("{file}:{}:", line_of(&world, needle));
    let (ok, out, err) = tree_policy(&tree, &["lint"]);
    assert!(ok, "warnings alone pass: {out}\n{err}");
    for (rule, object, place) in [
        (
            "broad-subject",
            "Authorization/everyone",
            at("\"system:serviceaccount:*\""),
        ),
        (
            "broad-subject",
            "policy wide/0",
            format!("{}:2:", tree.path("policies/wide.cedar").display()),
        ),
        (
            "unrestricted-store",
            "Authorization/app",
            at("[main, restricted]"),
        ),
        (
            "shadowed-permit",
            "Authorization/admins",
            at("{restricted: [admin/*]}"),
        ),
        (
            "unused-federation",
            "KubernetesFederation/idle",
            at("name: idle"),
        ),
        (
            "unreadable-store",
            "ClusterSecretStore/orphan",
            at("name: orphan"),
        ),
    ] {
        let head = format!("warning[{rule}]: {object}: ");
        let found = out
            .split("\n\n")
            .find(|f| f.starts_with(&head))
            .unwrap_or_else(|| panic!("{head}:\n{out}"));
        assert!(found.contains(&format!("--> {place}")), "{place}:\n{found}");
        assert!(found.contains('^'), "{found}");
    }
    assert!(
        out.contains("policy authorization/admins/remote-keys"),
        "{out}"
    );
    assert!(out.contains("denied by no-admin"), "{out}");
    assert!(out.contains("0 errors, 6 warnings"), "{out}");

    let (ok, _, _) = tree_policy(&tree, &["lint", "--deny-warnings"]);
    assert!(!ok, "--deny-warnings fails on warnings");

    let (ok, out, _) = tree_policy(&tree, &["lint", "--json"]);
    assert!(ok);
    let report: Value = serde_json::from_str(&out).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 6, "{out}");
    let shadowed = findings
        .iter()
        .find(|f| f["rule"] == "shadowed-permit")
        .unwrap();
    assert_eq!(shadowed["severity"], "warning");
    assert_eq!(
        shadowed["span"]["line"],
        line_of(&world, "{restricted: [admin/*]}")
    );
    assert!(report["evaluated"]["requests"].as_u64().unwrap() > 0);

    // What `validate` calls an error fails lint too.
    let broken = world.replace("[main, restricted]", "[main, restricted, nosuch]");
    let tree = Tree::new(
        &[("world.yaml", &broken)],
        &[("no-admin.cedar", FORBID_ADMIN)],
    );
    let (ok, out, _) = tree_policy(&tree, &["lint"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("error[invalid]: Authorization/app: ClusterSecretStore nosuch does not exist"),
        "{out}"
    );

    // The example world has one finding, and only a warning.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out, _) = policy(
        &root.join("policies/tests/manifests"),
        &root.join("policies/examples"),
        &["lint"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("0 errors, 1 warnings"), "{out}");
}

/// `world()` plus an Authorization `reporting` for `subject` reading `reports/*` of `store`.
fn reporting_world(subject: &str) -> String {
    world()
        + &authorization(
            "reporting",
            subject,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [reports/*]}\n",
        )
}

/// Runs `esi-server policy diff <args>` in `dir` (temporary files in `dir/tmp`, created
/// here): (exit code, stdout, stderr).
fn diff_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(server_bin())
        .current_dir(dir)
        .env("TMPDIR", &tmp)
        .args(["policy", "diff"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `esi-server policy diff` from `old` to `new` (their manifests and policies) with `extra`,
/// run in `old`'s directory: (exit code, stdout, stderr).
fn diff_trees(old: &Tree, new: &Tree, extra: &[&str]) -> (i32, String, String) {
    let dirs = [
        "--old-manifests".to_owned(),
        old.path("manifests").display().to_string(),
        "--old-policies".to_owned(),
        old.path("policies").display().to_string(),
        "--manifests".to_owned(),
        new.path("manifests").display().to_string(),
        "--policies".to_owned(),
        new.path("policies").display().to_string(),
    ];
    let mut args: Vec<&str> = dirs.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    diff_in(old.dir.path(), &args)
}

/// The changes of a `policy diff --json` answer: (change, principal label, action, resource
/// label, the new tree's determining policies).
fn change_rows(d: &Value) -> Vec<(String, String, String, String, Value)> {
    d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_owned(),
                c["principal_label"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
                c["resource_label"].as_str().unwrap().to_owned(),
                c["new"]["policies"].clone(),
            )
        })
        .collect()
}

/// `diff` between two directory trees: a glob widened from one ServiceAccount to the
/// whole federation is a gain for every principal it now covers, computed by the engines;
/// text, `--json`, `--markdown`, and the exit codes.
#[test]
fn diff_detects_a_widened_glob() {
    let old_world = reporting_world("system:serviceaccount:reporting:nightly");
    let new_world = reporting_world("system:serviceaccount:*");
    let old = Tree::new(&[("world.yaml", &old_world)], &[("no-k2.cedar", FORBID_K2)]);
    let new = Tree::new(&[("world.yaml", &new_world)], &[("no-k2.cedar", FORBID_K2)]);
    let run = |extra: &[&str]| diff_trees(&old, &new, extra);

    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let gained: Vec<(String, String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["change"], "gained", "{c}");
            (
                c["principal_label"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
                c["resource_label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Every principal but apps/app (which reads the whole store already) and the one
    // ServiceAccount named before gains `reports/*`; the glob's own representative is
    // `alpha/*/*`.
    let expected: Vec<(String, String, String)> = [("alpha/*/*", "get", "store:reports/*")]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(gained, expected, "{out}");
    assert_eq!(
        d["changes"][0]["new"]["policies"],
        json!(["authorization/reporting/remote-keys"])
    );
    assert_eq!(d["changes"][0]["old"]["policies"], json!([]));
    assert_eq!(
        (d["gained"].as_u64(), d["lost"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(d["truncated"], false);

    let (code, out, _) = run(&[]);
    assert_eq!(code, 0);
    assert!(out.contains("1 gained, 0 lost"), "{out}");
    assert!(
        out.contains("alpha/*/* (any ServiceAccount matching system:serviceaccount:*:*)\n  + get"),
        "{out}"
    );
    assert!(
        out.contains("now allowed by authorization/reporting/remote-keys; was denied by default"),
        "{out}"
    );

    let (code, out, _) = run(&["--markdown", "--exit-code"]);
    assert_eq!(code, 1, "--exit-code: 1 on changes\n{out}");
    assert!(out.starts_with("### ESI policy diff: "), "{out}");
    assert!(
        out.contains("| 🟢 gained | alpha/&#42;/&#42; (any matching system:serviceaccount:&#42;:&#42;) | get | store:reports/&#42; | allowed by authorization/reporting/remote-keys | denied by default |"),
        "{out}"
    );

    // Narrowing back is a loss; a tree against itself is no change (exit 0 with
    // --exit-code); a bound below the requests makes --exit-code inconclusive (2).
    let (om, op, nm, np) = (
        old.path("manifests"),
        old.path("policies"),
        new.path("manifests"),
        new.path("policies"),
    );
    let (om, op, nm, np) = (
        om.to_str().unwrap(),
        op.to_str().unwrap(),
        nm.to_str().unwrap(),
        np.to_str().unwrap(),
    );
    let args = [
        "--old-manifests",
        nm,
        "--old-policies",
        np,
        "--manifests",
        om,
        "--policies",
        op,
    ];
    let (code, out, _) = diff_in(old.dir.path(), &args);
    assert_eq!(code, 0);
    assert!(out.contains("0 gained, 1 lost"), "{out}");
    assert!(out.contains("  - get          store:reports/*"), "{out}");
    let same = ["--old-manifests", nm, "--manifests", nm, "--exit-code"];
    let (code, out, _) = diff_in(old.dir.path(), &same);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no access changes"), "{out}");
    let mut cut = same.to_vec();
    cut.extend(["--max-requests", "2"]);
    let (code, out, err) = diff_in(old.dir.path(), &cut);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("NOT compared"), "{out}");
    assert!(err.contains("raise --max-requests"), "{err}");

    // Trees that cannot be read: exit 2, whatever --exit-code says.
    let (code, _, err) = diff_in(old.dir.path(), &["--manifests", "m", "--git=-x..HEAD"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("starts with '-'"), "{err}");
}

/// `diff --git A..B` and `diff --git A` (against the working tree) compare the same
/// directories at two revisions of a repository; nothing in it is changed.
#[test]
fn diff_compares_git_revisions() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let write = |path: &str, text: &str| {
        let p = repo.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    git(&["init", "-q", "-b", "main"]);
    write(
        "deploy/manifests/world.yaml",
        &reporting_world("system:serviceaccount:reporting:nightly"),
    );
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "old"]);
    // The second revision widens the glob and adds the first .cedar file (the policies
    // directory does not exist at the first).
    write(
        "deploy/manifests/world.yaml",
        &reporting_world("system:serviceaccount:*"),
    );
    write("deploy/policies/no-k2.cedar", FORBID_K2);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "new"]);
    let status_before = git(&["status", "--porcelain"]);

    let base = [
        "--manifests",
        "deploy/manifests",
        "--policies",
        "deploy/policies",
    ];
    let mut args = base.to_vec();
    args.extend(["--git", "HEAD~1..HEAD", "--json"]);
    let (code, out, err) = diff_in(repo.path(), &args);
    assert_eq!(code, 0, "{out}\n{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert!(d["old"].as_str().unwrap().starts_with("HEAD~1 ("), "{out}");
    let changes: Vec<(String, String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_owned(),
                c["principal_label"].as_str().unwrap().to_owned(),
                c["resource_label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The widened glob gains reports/*; the new forbid takes k2 from apps/app, named as
    // a key by the new policy file.
    let expected: Vec<(String, String, String)> = [
        ("gained", "alpha/*/*", "store:reports/*"),
        ("lost", "alpha/apps/app", "store:k2"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(changes, expected, "{out}");
    let lost = &d["changes"][1];
    assert_eq!(lost["new"]["policies"], json!(["no-k2"]));
    assert_eq!(lost["new"]["forbidden"], true);

    // One revision: against the working tree, where the forbid is removed again.
    std::fs::remove_file(repo.path().join("deploy/policies/no-k2.cedar")).unwrap();
    let mut args = base.to_vec();
    args.extend(["--git", "HEAD"]);
    let (code, out, err) = diff_in(repo.path(), &args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 gained, 0 lost"), "{out}");
    assert!(out.contains("-> working tree (deploy/manifests)"), "{out}");
    assert!(out.contains("  + get          store:k2"), "{out}");
    std::fs::write(repo.path().join("deploy/policies/no-k2.cedar"), FORBID_K2).unwrap();
    assert_eq!(git(&["status", "--porcelain"]), status_before);
    // No temporary checkout is left behind (the runs' TMPDIR is the repository's `tmp`,
    // which git ignores only because it is empty).
    let left: Vec<_> = std::fs::read_dir(repo.path().join("tmp"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A revision that does not exist.
    let mut args = base.to_vec();
    args.extend(["--git", "nosuch..HEAD"]);
    let (code, _, err) = diff_in(repo.path(), &args);
    assert_eq!(code, 2);
    assert!(err.contains("\"nosuch\" is not a commit"), "{err}");
}

/// Runs headless Chromium (Debian's `chromium`) with `args` and a fresh profile, for at
/// most two minutes: stdout. Fails with a clear message when Chromium is not installed,
/// unless `ESI_SKIP_CHROMIUM=1` says to skip (then `None`).
fn chromium(profile: &Path, args: &[&str]) -> Option<String> {
    if std::env::var("ESI_SKIP_CHROMIUM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: ESI_SKIP_CHROMIUM=1, the HTML report is not rendered in Chromium");
        return None;
    }
    let mut child = match Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run chromium ({e}): install it (scripts/chromium.sh install, or apt-get install chromium), or set ESI_SKIP_CHROMIUM=1 to skip this test explicitly"
        ),
    };
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "chromium {args:?}: {status}");
    Some(reader.join().unwrap())
}

/// The cell of `principal` × `column` in a rendered DOM: its opening tag and content.
fn cell<'a>(dom: &'a str, principal: &str, column: &str) -> &'a str {
    let key = format!("data-principal=\"{principal}\" data-column=\"{column}\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no cell {principal} × {column}"));
    let end = dom[at..].find("</td>").map_or(dom.len(), |e| at + e);
    &dom[at..end]
}

/// `report --html`: one self-contained page that renders in headless Chromium with the
/// expected matrix (the DOM after rendering), escapes what manifests and policies hold,
/// colours a diff, and yields a screenshot (target/artifacts/policy-report.png).
#[test]
fn report_renders_the_access_matrix_in_chromium() {
    // A key pattern and a policy id that would be markup if pasted unescaped.
    let hostile = reporting_world("system:serviceaccount:reporting:*").replace(
        "[reports/*]",
        "[\"reports/*\", \"<script>alert(1)</script>\"]",
    );
    let old_world = reporting_world("system:serviceaccount:reporting:nightly");
    let injected = "@id(\"<img/src=x/onerror=alert(2)>\")\nforbid (principal, action == Esi::Action::\"get\", resource is Esi::RemoteKey)\nwhen { resource.key == \"</pre><script>alert(3)</script>\" };\n";
    let old = Tree::new(&[("world.yaml", &old_world)], &[("no-k2.cedar", FORBID_K2)]);
    let new = Tree::new(
        &[("world.yaml", &hostile)],
        &[("no-k2.cedar", FORBID_K2), ("injected.cedar", injected)],
    );
    let out_file = new.dir.path().join("report.html");
    let (ok, out, err) = tree_policy(&new, &["report", "--html", out_file.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("principals ×"), "{out}");
    let html = std::fs::read_to_string(&out_file).unwrap();
    for bad in [
        "<script",
        "<img",
        "src=\"",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(bad), "{bad} in the page");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", out_file.display());
    let Some(dom) = chromium(profile.path(), &["--dump-dom", &url]) else {
        return;
    };
    assert!(dom.contains("id=\"matrix\""), "{dom}");
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(!dom.contains("<img"), "an img element in the DOM");
    // apps/app reads the store except k2, which the forbid takes; it uses its generator.
    let app = cell(&dom, "alpha/apps/app", "store");
    assert!(
        app.contains("data-access=\"partial\" data-forbid=\"true\""),
        "{app}"
    );
    assert!(
        app.contains("data-item=\"k2\" data-state=\"forbid\""),
        "{app}"
    );
    assert!(
        app.contains("data-item=\"find\" data-state=\"allow\""),
        "{app}"
    );
    assert!(app.contains(">no-k2</a>"), "{app}");
    let generator = cell(&dom, "alpha/apps/app", "apps/Password/pw");
    assert!(generator.contains("data-access=\"full\""), "{generator}");
    // Any ServiceAccount of reporting reads reports/* only; any other one nothing.
    let reporting = cell(&dom, "alpha/reporting/*", "store");
    assert!(
        reporting.contains("data-item=\"reports/*\" data-state=\"allow\""),
        "{reporting}"
    );
    assert!(reporting.contains("data-access=\"partial\""), "{reporting}");
    let anyone = cell(&dom, "alpha/*/*", "store");
    assert!(
        anyone.contains("data-access=\"none\" data-forbid=\"false\""),
        "{anyone}"
    );
    // Each linked policy is listed with its anchor, its text escaped.
    let link = app
        .split("href=\"#")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    assert!(dom.contains(&format!("id=\"{link}\"")), "{link}");
    assert!(dom.contains("&lt;img/src=x/onerror=alert(2)&gt;"));

    // Two trees: the widened glob is a gain, coloured; the screenshot is of this page.
    let (ok, out, err) = tree_policy(
        &new,
        &[
            "report",
            "--html",
            out_file.to_str().unwrap(),
            "--old-manifests",
            old.path("manifests").to_str().unwrap(),
            "--old-policies",
            old.path("policies").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("cells changed"), "{out}");
    let dom = chromium(profile.path(), &["--dump-dom", &url]).unwrap();
    let widened = cell(&dom, "alpha/reporting/*", "store");
    assert!(widened.contains("data-diff=\"gained\""), "{widened}");
    assert!(
        widened.contains("data-item=\"reports/*\" data-state=\"gained\""),
        "{widened}"
    );
    assert!(
        dom.contains("policy-added") || dom.contains(" added\""),
        "{dom}"
    );
    // The ServiceAccount named before keeps reports/* and gains the new key pattern.
    let nightly = cell(&dom, "alpha/reporting/nightly", "store");
    assert!(
        nightly.contains("data-item=\"reports/*\" data-state=\"allow\""),
        "{nightly}"
    );
    assert!(
        nightly
            .contains("data-item=\"&lt;script&gt;alert(1)&lt;/script&gt;\" data-state=\"gained\""),
        "{nightly}"
    );
    let generator = cell(&dom, "alpha/apps/app", "apps/Password/pw");
    assert!(generator.contains("data-diff=\"same\""), "{generator}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("policy-report.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        profile.path(),
        &[&format!("--screenshot={}", png.display()), &url],
    )
    .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 20_000,
        "a near-empty screenshot: {} bytes",
        bytes.len()
    );
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

/// Issue 13, conditions beyond ESE: the server decides with the TCP peer as
/// `context.sourceAddress` (a `.cedar` permit for 127.0.0.1/32, a forbid for 10.0.0.0/8, an
/// Authorization's `spec.when`), and records it in the audit line.
#[tokio::test(flavor = "multi_thread")]
async fn source_address_conditions_decide_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let loopback =
        "context has sourceAddress && context.sourceAddress.isInRange(ip(\\\"127.0.0.1/32\\\"))";
    let private =
        "context has sourceAddress && context.sourceAddress.isInRange(ip(\\\"10.0.0.0/8\\\"))";
    let manifests = static_federation(ISS, AUD)
        + &fake_store("store")
        + &authorization(
            "near",
            "system:serviceaccount:apps:near",
            &format!("  allowedClusterSecretStores: [store]\n  when: \"{loopback}\"\n"),
        )
        + &authorization(
            "far",
            "system:serviceaccount:apps:far",
            &format!("  allowedClusterSecretStores: [store]\n  when: \"{private}\"\n"),
        );
    let cedar = "@id(\"cedar-loopback\")\npermit (principal in Esi::Namespace::\"alpha/ops\", action == Esi::Action::\"get\", resource)\nwhen { context has sourceAddress && context.sourceAddress.isInRange(ip(\"127.0.0.1/32\")) };\n\n@id(\"cedar-no-private\")\nforbid (principal, action, resource)\nwhen { context has sourceAddress && context.sourceAddress.isInRange(ip(\"10.0.0.0/8\")) };\n";
    let server = Server::start_with_args(
        &[("world.yaml", manifests)],
        &[("net.cedar", cedar)],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let cases = [
        ("apps", "near", 200, json!(["authorization/near/stores"])),
        ("apps", "far", 404, json!([])),
        ("ops", "anyone", 200, json!(["cedar-loopback"])),
    ];
    for (i, (ns, sa, status, ids)) in cases.iter().enumerate() {
        let token = mint("ec-1", &sa_claims(ISS, AUD, ns, sa), None);
        let (got, body) = server
            .post("/secretstore/store/secrets/k", Some(&token), json!({}))
            .await;
        assert_eq!(got, *status, "{ns}/{sa}: {body}");
        let lines = audit_lines(&audit);
        let line = &lines[i];
        assert_eq!(line["policies"], *ids, "{ns}/{sa}: {line}");
        assert_eq!(line["source_address"], "127.0.0.1", "{line}");
        // `explain --source-address` decides in the server's context: the same ids, the
        // same decision (an IPv4-mapped address is the IPv4 one, as the server takes it).
        for address in ["127.0.0.1", "::ffff:127.0.0.1"] {
            let (ok, out, err) = policy(
                &server.manifests,
                &server.policies,
                &[
                    "explain",
                    "--json",
                    "--principal",
                    &format!("alpha/{ns}/{sa}"),
                    "--store",
                    "store",
                    "--key",
                    "k",
                    "--source-address",
                    address,
                ],
            );
            assert!(ok, "{out}{err}");
            let explained: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(explained["policies"], line["policies"], "{ns}/{sa}: {out}");
            assert_eq!(explained["decision"], line["decision"], "{ns}/{sa}: {out}");
            assert_eq!(explained["context"]["sourceAddress"], "127.0.0.1", "{out}");
        }
    }
    // The same requests decided for another address: `policy test` with a context.
    let cases_dir = dir.path().join("cases");
    std::fs::create_dir_all(&cases_dir).unwrap();
    std::fs::write(
        cases_dir.join("net.yaml"),
        "cases:\n  - name: near from loopback\n    principal: alpha/apps/near\n    action: get\n    resource: {store: store, key: k}\n    context: {sourceAddress: 127.0.0.1}\n    expect: allow\n  - name: near from elsewhere\n    principal: alpha/apps/near\n    action: get\n    resource: {store: store, key: k}\n    context: {sourceAddress: 192.0.2.1}\n    expect: deny\n  - name: far from its range is still forbidden by the cedar file\n    principal: alpha/apps/far\n    action: get\n    resource: {store: store, key: k}\n    context: {sourceAddress: 10.1.2.3}\n    expect: deny\n    policies: [cedar-no-private]\n  - name: ops from loopback\n    principal: alpha/ops/anyone\n    action: get\n    resource: {store: store, key: k}\n    context: {sourceAddress: 127.0.0.1, time: \"2026-06-01T00:00:00Z\"}\n    expect: allow\n    policies: [cedar-loopback]\n",
    )
    .unwrap();
    let (ok, out, err) = policy(
        &server.manifests,
        &server.policies,
        &["test", cases_dir.to_str().unwrap()],
    );
    assert!(ok, "{out}\n{err}");
}

/// A `spec.when` that tries to close the condition and add a policy of its own is refused:
/// `validate` names the object and fails, and the Authorization grants nothing.
#[test]
fn spec_when_injection_is_refused() {
    let manifests = static_federation(ISS, AUD)
        + &fake_store("store")
        + &authorization(
            "evil",
            "system:serviceaccount:apps:evil",
            "  allowedClusterSecretStores: [store]\n  when: \"false } ; permit (principal, action, resource) when { true\"\n",
        );
    let tree = Tree::new(&[("world.yaml", &manifests)], &[]);
    let (ok, out, err) = tree_policy(&tree, &["validate"]);
    assert!(!ok, "{out}\n{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("Authorization/evil"), "{text}");
    assert!(text.contains("spec.when"), "{text}");
    let (ok, out, err) = tree_policy(&tree, &["compile"]);
    let text = format!("{ok} {out}{err}");
    assert!(!out.contains("authorization/evil"), "{text}");
}

/// Review finding 2 (issue 13): `explain` ignored what did not load. A broken edit meant to
/// revoke showed DENY while the server kept the old permit (the last good form of a file
/// it already served). Now the answer says PARTIAL LOAD first, lists what did not load, and
/// exits 1.
#[test]
fn explain_says_a_partial_load_and_fails() {
    let world = world();
    let tree = Tree::new(
        &[("world.yaml", &world)],
        &[(
            "broken.cedar",
            "forbid (principal, action, resource) when { oops",
        )],
    );
    let args = [
        "explain",
        "--principal",
        "alpha/apps/app",
        "--find",
        "store",
    ];
    let (code, out, err) = policy_status(&tree.path("manifests"), &tree.path("policies"), &args);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.starts_with("PARTIAL LOAD: "), "{out}");
    assert!(out.contains("did not load: "), "{out}");
    assert!(out.contains("broken.cedar"), "{out}");
    assert!(err.contains("objects did not load"), "{err}");
    let mut json_args = vec!["explain", "--json"];
    json_args.extend_from_slice(&args[1..]);
    let (code, out, _) = policy_status(&tree.path("manifests"), &tree.path("policies"), &json_args);
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partial_load"], true);
    assert!(
        v["load_errors"][0]
            .as_str()
            .unwrap()
            .contains("broken.cedar"),
        "{v}"
    );
    // Without the broken file: a full load, exit 0, no such line.
    std::fs::remove_file(tree.path("policies").join("broken.cedar")).unwrap();
    let (code, out, _) = policy_status(&tree.path("manifests"), &tree.path("policies"), &args);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("decision: "), "{out}");
}

/// Piping a policy command into a reader that stops early (`| head -1`) panicked with
/// "failed printing to stdout: Broken pipe" (exit 101). It now ends as Unix tools do: by
/// SIGPIPE, quietly.
#[test]
fn a_closed_pipe_ends_policy_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let world = world();
    // Enough output to outlast any pipe buffer.
    let many: String = (0..2000)
        .map(|i| format!("@id(\"p{i}\")\nforbid (principal, action, resource) when {{ false }};\n"))
        .collect();
    let tree = Tree::new(&[("world.yaml", &world)], &[("many.cedar", &many)]);
    let mut child = Command::new(server_bin())
        .args(["policy", "compile", "--manifests"])
        .arg(tree.path("manifests"))
        .arg("--policies")
        .arg(tree.path("policies"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away at once.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

const GITHUB: &str = "https://token.actions.githubusercontent.com";

/// An `OIDCFederation` `github` (handing `environment` to policies), a fake store `store`
/// with `k`, `k2` and `prod/db`, and Authorizations of `github` given as `(name, subject,
/// grants)` (grants: YAML lines under `spec`).
fn github_world(authorizations: &[(&str, &str, &str)]) -> String {
    let mut world = format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: OIDCFederation
metadata: {{name: github}}
spec:
  issuer: {GITHUB}
  audiences: [{AUD}]
  claims: [environment]
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: store}}
spec:
  provider:
    fake:
      data:
        - {{key: k, value: v1}}
        - {{key: k2, value: v2}}
        - {{key: prod/db, value: v3}}
"#
    );
    for (name, subject, grants) in authorizations {
        world.push_str(&format!(
            "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: OIDCFederation, name: github}}\n  subject: {{oidc: {{issuer: \"{GITHUB}\", subject: \"{subject}\"}}}}\n{grants}"
        ));
    }
    world
}

/// Issue 13: `diff` covers OIDC subjects. An exact subject granted one more key gains it,
/// and a new glob's representative (`github/repo:org/*`, the glob itself) gains what the
/// glob is granted; text and `--json` show both, with the principal's kind, and `explain`
/// of the label the diff shows decides as the diff's new tree did. (OIDC subjects were
/// dropped from the enumeration: this diff showed nothing.)
#[test]
fn diff_shows_an_oidc_subject_gaining_access() {
    const MAIN: &str = "repo:org/app:ref:refs/heads/main";
    let old_world = github_world(&[(
        "deploy",
        MAIN,
        "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
    )]);
    let new_world = github_world(&[
        (
            "deploy",
            MAIN,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k, k2]}\n",
        ),
        (
            "ci",
            "repo:org/*",
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
        ),
    ]);
    let old = Tree::new(&[("world.yaml", &old_world)], &[]);
    let new = Tree::new(&[("world.yaml", &new_world)], &[]);
    let run = |extra: &[&str]| diff_trees(&old, &new, extra);

    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let changes = change_rows(&d);
    let expected: Vec<(String, String, String, String, Value)> = vec![
        (
            "gained".into(),
            "github/repo:org/*".into(),
            "get".into(),
            "store:k".into(),
            json!(["authorization/ci/remote-keys"]),
        ),
        (
            "gained".into(),
            format!("github/{MAIN}"),
            "get".into(),
            "store:k2".into(),
            json!(["authorization/deploy/remote-keys"]),
        ),
    ];
    assert_eq!(changes, expected, "{out}");
    assert_eq!(
        d["changes"][0]["principal"],
        json!({"federation": "github", "type": "OidcSubject", "subject": "repo:org/*"})
    );
    assert_eq!(d["changes"][0]["represents"], "repo:org/*");
    assert_eq!(
        d["changes"][1]["principal"],
        json!({"federation": "github", "type": "OidcSubject", "subject": MAIN})
    );
    assert!(d["changes"][1].get("represents").is_none(), "{out}");
    assert_eq!(
        (d["gained"].as_u64(), d["lost"].as_u64()),
        (Some(2), Some(0))
    );

    let (code, out, err) = run(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 gained, 0 lost"), "{out}");
    assert!(
        out.contains("\ngithub/repo:org/* (any subject matching repo:org/*)\n  + get          store:k\n      now allowed by authorization/ci/remote-keys; was denied by default\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "\ngithub/{MAIN}\n  + get          store:k2\n      now allowed by authorization/deploy/remote-keys; was denied by default\n"
        )),
        "{out}"
    );

    // `explain` of the label the diff shows decides as the diff's new tree did.
    for (principal, key, policy) in [
        ("github/repo:org/*", "k", "authorization/ci/remote-keys"),
        (
            &format!("github/{MAIN}") as &str,
            "k2",
            "authorization/deploy/remote-keys",
        ),
    ] {
        let explained = explain_json(
            &new,
            &["--principal", principal, "--store", "store", "--key", key],
        );
        assert_eq!(explained["decision"], "allow", "{explained}");
        assert_eq!(explained["policies"], json!([policy]), "{explained}");
        assert_eq!(explained["principal"]["type"], "OidcSubject", "{explained}");
    }
}

/// Issue 13: `report --html` has rows for OIDC subjects: the exact subject an
/// Authorization names, a glob's representative and the federation's "any other" subject
/// (`github/*`), each with its cells; a forbid on a claim the enumerated token lacks is
/// shown taking `prod/db` away. (The page had no such row.)
#[test]
fn report_has_rows_for_oidc_subjects() {
    let world = github_world(&[
        (
            "deploy",
            "repo:org/app:environment:production",
            "  allowedClusterSecretStores: [store]\n",
        ),
        (
            "ci",
            "repo:org/*",
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
        ),
    ]);
    let prod_only = "@id(\"prod-from-production\")\nforbid (principal is Esi::OidcSubject, action, resource is Esi::RemoteKey)\nwhen { resource.key like \"prod/*\" }\nunless { principal.claims has environment && principal.claims.environment == \"production\" };\n";
    let tree = Tree::new(&[("world.yaml", &world)], &[("ci.cedar", prod_only)]);
    let out_file = tree.dir.path().join("report.html");
    let (ok, out, err) = tree_policy(&tree, &["report", "--html", out_file.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 principals × 1 columns"), "{out}");
    let html = std::fs::read_to_string(&out_file).unwrap();
    for principal in [
        "github/*",
        "github/repo:org/*",
        "github/repo:org/app:environment:production",
    ] {
        assert!(
            html.contains(&format!(
                "data-principal=\"{principal}\" data-type=\"OidcSubject\""
            )),
            "no row for {principal}"
        );
    }
    let deploy = cell(&html, "github/repo:org/app:environment:production", "store");
    assert!(
        deploy.contains("data-access=\"partial\" data-forbid=\"true\""),
        "{deploy}"
    );
    assert!(
        deploy.contains("data-item=\"prod/*\" data-state=\"forbid\""),
        "{deploy}"
    );
    assert!(
        deploy.contains("data-item=\"find\" data-state=\"allow\""),
        "{deploy}"
    );
    assert!(deploy.contains(">prod-from-production</a>"), "{deploy}");
    let glob = cell(&html, "github/repo:org/*", "store");
    assert!(
        glob.contains("data-item=\"k\" data-state=\"allow\"")
            && glob.contains("data-access=\"partial\""),
        "{glob}"
    );
    assert!(
        html.contains("title=\"any subject matching repo:org/*\""),
        "the representative says what it stands for"
    );
    let anyone = cell(&html, "github/*", "store");
    assert!(anyone.contains("data-access=\"none\""), "{anyone}");
    // No ServiceAccount row is made up for the OIDC federation.
    assert!(!html.contains("data-principal=\"github/*/*\""));
}

/// Issue 13: for OIDC subjects too, `explain --principal FED/SUBJECT --claim …` shows the
/// policy ids, decision and principal of the server's audit line for the same request:
/// allowed by the exact subject's Authorization, denied by a forbid on a claim, allowed by
/// a glob's Authorization, denied by a forbid for a token without the claim.
#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_servers_audit_lines_for_oidc_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let issuer = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    let mut manifests = oidc_federation("github", &issuer, AUD, "  claims: [environment]\n");
    let authorization = |name: &str, subject: &str, grants: &str| {
        format!(
            "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: OIDCFederation, name: github}}\n  subject: {{oidc: {{issuer: \"{}\", subject: \"{subject}\"}}}}\n{grants}",
            issuer.url
        )
    };
    manifests.push_str(&format!(
        "---\n{}",
        r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: store}
spec:
  provider:
    fake:
      data:
        - {key: k, value: v1}
        - {key: prod/db, value: v3}
"#
    ));
    const APP: &str = "repo:org/app:environment:production";
    manifests.push_str(&authorization(
        "deploy",
        APP,
        "  allowedClusterSecretStores: [store]\n",
    ));
    manifests.push_str(&authorization(
        "ci",
        "repo:org/*",
        "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
    ));
    let prod_only = "@id(\"prod-from-production\")\nforbid (principal is Esi::OidcSubject, action, resource is Esi::RemoteKey)\nwhen { resource.key like \"prod/*\" }\nunless { principal.claims has environment && principal.claims.environment == \"production\" };\n";
    let server = Server::start_with_args(
        &[("github.yaml", manifests)],
        &[("ci.cedar", prod_only)],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let token = |subject: &str, environment: Option<&str>| {
        let now = now();
        let mut claims = json!({
            "iss": issuer.url, "aud": AUD, "sub": subject,
            "iat": now, "nbf": now, "exp": now + 300,
        });
        if let Some(env) = environment {
            claims["environment"] = json!(env);
        }
        mint("rsa-1", &claims, None)
    };
    const LIB: &str = "repo:org/lib:ref:refs/heads/main";
    // (subject, environment claim, key, status, the policies the server decides by).
    let requests: [(&str, Option<&str>, &str, u16, Value); 4] = [
        (
            APP,
            Some("production"),
            "prod/db",
            200,
            json!(["authorization/deploy/stores"]),
        ),
        (
            APP,
            Some("staging"),
            "prod/db",
            404,
            json!(["prod-from-production"]),
        ),
        (LIB, None, "k", 200, json!(["authorization/ci/remote-keys"])),
        (LIB, None, "prod/db", 404, json!(["prod-from-production"])),
    ];
    for (subject, environment, key, status, policies) in &requests {
        let before = audit_lines(&audit).len();
        let path = format!("/secretstore/store/secrets/{key}");
        let (got, text) = server
            .post(&path, Some(&token(subject, *environment)), json!({}))
            .await;
        assert_eq!(got, *status, "{subject} {key}: {text}");
        let lines = audit_lines(&audit);
        assert_eq!(lines.len(), before + 1, "{path}: {lines:?}");
        let line = &lines[before];
        assert_eq!(line["policies"], *policies, "{line}");
        let principal = format!("github/{subject}");
        let claim = environment.map(|e| format!("--claim=environment={e}"));
        let mut args = vec![
            "explain",
            "--json",
            "--principal",
            &principal,
            "--store",
            "store",
            "--key",
            key,
        ];
        if let Some(c) = &claim {
            args.push(c);
        }
        let (ok, out, err) = policy(&server.manifests, &server.policies, &args);
        assert!(ok, "{out}\n{err}");
        let explained: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(explained["policies"], line["policies"], "{subject}: {line}");
        assert_eq!(explained["decision"], line["decision"], "{subject}: {line}");
        assert_eq!(explained["resource"], line["resource"], "{line}");
        assert_eq!(explained["action"], line["action"], "{line}");
        assert_eq!(
            explained["principal"]["entity"], line["principal_id"],
            "{line}"
        );
        assert_eq!(
            explained["principal"]["type"], line["principal_type"],
            "{line}"
        );
    }
}

const SPIRE_API: &str = "spiffe://example.org/ns/prod/sa/api";
const SPIRE_BATCH: &str = "spiffe://example.org/ns/batch/*";

/// A `SpiffeFederation` `spire` of trust domain `example.org` (a static bundle of the
/// fixture key `ec-1`), a fake store `store` with `k` and `k2`, and Authorizations of
/// `spire` given as `(name, spiffeID, grants)` (grants: YAML lines under `spec`).
fn spire_world(authorizations: &[(&str, &str, &str)]) -> String {
    let mut key = jwk("ec-1");
    key["use"] = json!("jwt-svid");
    let bundle = json!({"keys": [key]}).to_string();
    let mut world = format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: spire}}
spec:
  trustDomain: example.org
  audiences: ["{AUD}"]
  bundle: '{bundle}'
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: store}}
spec:
  provider:
    fake:
      data:
        - {{key: k, value: v1}}
        - {{key: k2, value: v2}}
"#
    );
    for (name, spiffe_id, grants) in authorizations {
        world.push_str(&format!(
            "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: SpiffeFederation, name: spire}}\n  subject: {{spiffe: {{spiffeID: \"{spiffe_id}\"}}}}\n{grants}"
        ));
    }
    world
}

/// Issue 18: `diff` covers SPIFFE workloads. An exact SPIFFE ID granted one more key gains
/// it, and a new `spiffeID` glob's representative (the glob itself) gains what the glob
/// is granted; `--json` and text show both with the principal's kind, and `explain` of the
/// exact ID (and of a workload the glob matches) decides as the diff's new tree did.
/// (The policy tools did not build with SPIFFE principals: no diff at all.)
#[test]
fn diff_shows_a_spiffe_workload_gaining_access() {
    let old_world = spire_world(&[(
        "api",
        SPIRE_API,
        "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
    )]);
    let new_world = spire_world(&[
        (
            "api",
            SPIRE_API,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k, k2]}\n",
        ),
        (
            "batch",
            SPIRE_BATCH,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
        ),
    ]);
    let old = Tree::new(&[("world.yaml", &old_world)], &[]);
    let new = Tree::new(&[("world.yaml", &new_world)], &[]);
    let run = |extra: &[&str]| diff_trees(&old, &new, extra);

    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    let changes = change_rows(&d);
    let expected: Vec<(String, String, String, String, Value)> = vec![
        (
            "gained".into(),
            format!("spire/{SPIRE_BATCH}"),
            "get".into(),
            "store:k".into(),
            json!(["authorization/batch/remote-keys"]),
        ),
        (
            "gained".into(),
            format!("spire/{SPIRE_API}"),
            "get".into(),
            "store:k2".into(),
            json!(["authorization/api/remote-keys"]),
        ),
    ];
    assert_eq!(changes, expected, "{out}");
    assert_eq!(
        d["changes"][0]["principal"],
        json!({"federation": "spire", "type": "SpiffeWorkload", "spiffeID": SPIRE_BATCH})
    );
    assert_eq!(d["changes"][0]["represents"], SPIRE_BATCH);
    assert_eq!(
        d["changes"][1]["principal"],
        json!({"federation": "spire", "type": "SpiffeWorkload", "spiffeID": SPIRE_API})
    );
    assert!(d["changes"][1].get("represents").is_none(), "{out}");

    let (code, out, err) = run(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 gained, 0 lost"), "{out}");
    assert!(
        out.contains(&format!(
            "\nspire/{SPIRE_BATCH} (any SPIFFE workload matching {SPIRE_BATCH})\n  + get          store:k\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "\nspire/{SPIRE_API}\n  + get          store:k2\n      now allowed by authorization/api/remote-keys; was denied by default\n"
        )),
        "{out}"
    );

    // `explain` of the exact ID, and of a workload the glob matches, decides as the
    // diff's new tree did.
    for (principal, key, policy) in [
        (SPIRE_API, "k2", "authorization/api/remote-keys"),
        (
            "spiffe://example.org/ns/batch/sa/job",
            "k",
            "authorization/batch/remote-keys",
        ),
    ] {
        let principal = format!("spire/{principal}");
        let explained = explain_json(
            &new,
            &["--principal", &principal, "--store", "store", "--key", key],
        );
        assert_eq!(explained["decision"], "allow", "{explained}");
        assert_eq!(explained["policies"], json!([policy]), "{explained}");
        assert_eq!(
            explained["principal"]["type"], "SpiffeWorkload",
            "{explained}"
        );
        assert_eq!(
            explained["principal"]["issuer"], "spiffe://example.org",
            "{explained}"
        );
    }
    // A SPIFFE ID the server's parser refuses, or of another trust domain, is refused.
    for (bad, why) in [
        (
            "spire/spiffe://example.net/ns/prod/sa/api",
            "not example.org",
        ),
        (
            "spire/spiffe://example.org/ns//api",
            "not a workload SPIFFE ID",
        ),
        (
            &format!("spire/{SPIRE_BATCH}") as &str,
            "not a workload SPIFFE ID",
        ),
        ("spire/prod/api", "not a workload SPIFFE ID"),
    ] {
        let (ok, out, err) = tree_policy(
            &new,
            &[
                "explain",
                "--principal",
                bad,
                "--store",
                "store",
                "--key",
                "k",
            ],
        );
        assert!(!ok, "{bad}: {out}");
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// Issue 18: `report --html` has rows for SPIFFE workloads: the exact SPIFFE ID, a glob's
/// representative and the federation's "any other" workload (`spire/spiffe://TD/*`).
#[test]
fn report_has_rows_for_spiffe_workloads() {
    let world = spire_world(&[
        ("api", SPIRE_API, "  allowedClusterSecretStores: [store]\n"),
        (
            "batch",
            SPIRE_BATCH,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
        ),
    ]);
    let tree = Tree::new(&[("world.yaml", &world)], &[]);
    let out_file = tree.dir.path().join("report.html");
    let (ok, out, err) = tree_policy(&tree, &["report", "--html", out_file.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 principals × 1 columns"), "{out}");
    let html = std::fs::read_to_string(&out_file).unwrap();
    for principal in [
        "spire/spiffe://example.org/*",
        &format!("spire/{SPIRE_BATCH}"),
        &format!("spire/{SPIRE_API}"),
    ] {
        assert!(
            html.contains(&format!(
                "data-principal=\"{principal}\" data-type=\"SpiffeWorkload\""
            )),
            "no row for {principal}"
        );
    }
    let glob = cell(&html, &format!("spire/{SPIRE_BATCH}"), "store");
    assert!(
        glob.contains("data-item=\"k\" data-state=\"allow\"")
            && glob.contains("data-access=\"partial\""),
        "{glob}"
    );
    let anyone = cell(&html, "spire/spiffe://example.org/*", "store");
    assert!(anyone.contains("data-access=\"none\""), "{anyone}");
    assert!(!html.contains("data-principal=\"spire/*/*\""));
}

/// Issue 18: for SPIFFE workloads too, `explain --principal FED/SPIFFE-ID` shows the
/// policy ids, decision and principal of the server's audit line for the same JWT-SVID
/// request: allowed by the exact ID's Authorization, by a glob's, denied by a forbid on
/// the workload's ServiceAccount, denied by default.
#[tokio::test(flavor = "multi_thread")]
async fn explain_matches_the_servers_audit_lines_for_spiffe_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let manifests = spire_world(&[
        ("api", SPIRE_API, "  allowedClusterSecretStores: [store]\n"),
        (
            "batch",
            SPIRE_BATCH,
            "  allowedClusterSecretStores: [store]\n  allowedRemoteKeys: {store: [k]}\n",
        ),
    ]);
    let forbid = "@id(\"no-archived\")\nforbid (principal is Esi::SpiffeWorkload, action, resource)\nwhen { principal has serviceAccount && principal.serviceAccount == \"archived\" };\n";
    let server = Server::start_with_args(
        &[("spire.yaml", manifests)],
        &[("mesh.cedar", forbid)],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let svid = |sub: &str| {
        let now = now();
        mint(
            "ec-1",
            &json!({"sub": sub, "aud": [AUD], "iat": now, "exp": now + 300}),
            None,
        )
    };
    // (SPIFFE ID, key, status, the policies the server decides by).
    let requests: [(&str, &str, u16, Value); 4] = [
        (SPIRE_API, "k2", 200, json!(["authorization/api/stores"])),
        (
            "spiffe://example.org/ns/batch/sa/job",
            "k",
            200,
            json!(["authorization/batch/remote-keys"]),
        ),
        (
            "spiffe://example.org/ns/batch/sa/archived",
            "k",
            404,
            json!(["no-archived"]),
        ),
        ("spiffe://example.org/ns/prod/sa/other", "k", 404, json!([])),
    ];
    for (spiffe_id, key, status, policies) in &requests {
        let before = audit_lines(&audit).len();
        let path = format!("/secretstore/store/secrets/{key}");
        let (got, text) = server.post(&path, Some(&svid(spiffe_id)), json!({})).await;
        assert_eq!(got, *status, "{spiffe_id} {key}: {text}");
        let lines = audit_lines(&audit);
        assert_eq!(lines.len(), before + 1, "{path}: {lines:?}");
        let line = &lines[before];
        assert_eq!(line["policies"], *policies, "{line}");
        let principal = format!("spire/{spiffe_id}");
        let args = [
            "explain",
            "--json",
            "--principal",
            &principal,
            "--store",
            "store",
            "--key",
            key,
        ];
        let (ok, out, err) = policy(&server.manifests, &server.policies, &args);
        assert!(ok, "{out}\n{err}");
        let explained: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            explained["policies"], line["policies"],
            "{spiffe_id}: {line}"
        );
        assert_eq!(
            explained["decision"], line["decision"],
            "{spiffe_id}: {line}"
        );
        assert_eq!(explained["resource"], line["resource"], "{line}");
        assert_eq!(explained["action"], line["action"], "{line}");
        assert_eq!(
            explained["principal"]["entity"], line["principal_id"],
            "{line}"
        );
        assert_eq!(
            explained["principal"]["type"], line["principal_type"],
            "{line}"
        );
    }
}

/// The authenticator's lookalike rule, as `explain` says it: while SpiffeFederation
/// `spire` serves `example.org`, a token of OIDCFederation `github` whose subject is a
/// workload of `example.org` is refused by the real server (401), and `explain
/// --principal github/spiffe://example.org/…` says that refusal (401, with the reason)
/// beside what the policies say; the same OIDC token for a workload ID of another trust
/// domain is served (200) and explained without a refusal, with the policy ids, decision
/// and principal of the server's audit line. (Before: `explain` said `allow` and nothing
/// else for the refused subject.)
#[tokio::test(flavor = "multi_thread")]
async fn explain_says_the_401_of_an_oidc_subject_that_reads_as_a_served_workload() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let issuer = Issuer::start_oidc(jwks(&["rsa-1"])).await;
    const SERVED: &str = "spiffe://example.org/ns/prod/sa/api";
    const OTHER: &str = "spiffe://other.org/ns/prod/sa/api";
    let mut manifests = spire_world(&[]);
    manifests.push_str("---\n");
    manifests.push_str(&oidc_federation("github", &issuer, AUD, ""));
    for (name, subject) in [("served", SERVED), ("other", OTHER)] {
        manifests.push_str(&format!(
            "---\napiVersion: federation.external-secrets.io/v1alpha1\nkind: Authorization\nmetadata: {{name: {name}}}\nspec:\n  federationRef: {{kind: OIDCFederation, name: github}}\n  subject: {{oidc: {{issuer: \"{}\", subject: \"{subject}\"}}}}\n  allowedClusterSecretStores: [store]\n",
            issuer.url
        ));
    }
    let server = Server::start_with_args(
        &[("world.yaml", manifests)],
        &[],
        &["--audit-log", audit.to_str().unwrap()],
    );
    let token = |subject: &str| {
        let now = now();
        mint(
            "rsa-1",
            &json!({"iss": issuer.url, "aud": AUD, "sub": subject, "iat": now, "nbf": now, "exp": now + 300}),
            None,
        )
    };
    let explain = |subject: &str| {
        let principal = format!("github/{subject}");
        let args = [
            "explain",
            "--json",
            "--principal",
            &principal,
            "--store",
            "store",
            "--key",
            "k",
        ];
        let (ok, out, err) = policy(&server.manifests, &server.policies, &args);
        assert!(ok, "{out}\n{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };

    let (status, text) = server
        .post(
            "/secretstore/store/secrets/k",
            Some(&token(SERVED)),
            json!({}),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    let explained = explain(SERVED);
    assert_eq!(explained["refusal"]["status"], 401, "{explained}");
    let reason = explained["refusal"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("trust domain example.org, which SpiffeFederation spire serves")
            && reason.ends_with("the server would answer 401"),
        "{reason}"
    );
    // The text says it first.
    let principal = format!("github/{SERVED}");
    let (ok, out, err) = policy(
        &server.manifests,
        &server.policies,
        &[
            "explain",
            "--principal",
            &principal,
            "--store",
            "store",
            "--key",
            "k",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.starts_with("REFUSED: the server answers 401 before any decision: "),
        "{out}"
    );

    let before = audit_lines(&audit).len();
    let (status, text) = server
        .post(
            "/secretstore/store/secrets/k",
            Some(&token(OTHER)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), before + 1, "{lines:?}");
    let line = &lines[before];
    let explained = explain(OTHER);
    assert!(explained.get("refusal").is_none(), "{explained}");
    assert_eq!(explained["decision"], line["decision"], "{line}");
    assert_eq!(explained["policies"], line["policies"], "{line}");
    assert_eq!(
        explained["principal"]["entity"], line["principal_id"],
        "{line}"
    );
}
