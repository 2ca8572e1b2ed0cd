//! End to end: the chart's Kubernetes-mode manifest (`deploy/kubernetes/esi-federation.yaml`,
//! rendered from `deploy/charts/esi-federation`) runs as written against the fake API
//! server: the container's args and environment taken as they are (the downward API
//! filled in, mounts standing in as directories), its ServiceAccount as the fake's user.
//! It must become ready and serve, and every request it makes to the API must be allowed
//! by the chart's RBAC (ClusterRoles and Roles bound to that ServiceAccount), so the chart
//! and the server cannot drift apart.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_kube::{FakeKube, RequestRecord};
use common::*;
use serde_json::{Value, json};

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/esi-federation.yaml"
);
const AUD: &str = "https://esi-federation.example.com";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn docs() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// One RBAC rule.
#[derive(Debug)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
    /// `None`: cluster-wide (ClusterRole via ClusterRoleBinding); else the Role's namespace.
    namespace: Option<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules granted to ServiceAccount `ns/sa` by the manifest's bindings.
fn rules_of(docs: &[Value], ns: &str, sa: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns);
        if !bound {
            continue;
        }
        let role_kind = b["roleRef"]["kind"].as_str().unwrap();
        let role_name = b["roleRef"]["name"].as_str().unwrap();
        let binding_ns = b["metadata"]["namespace"].as_str().map(str::to_string);
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_kind
                    && d["metadata"]["name"] == role_name
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"].as_str() == binding_ns.as_deref())
            })
            .unwrap_or_else(|| panic!("{role_kind}/{role_name} is not in the manifest"));
        let namespace = if b["kind"] == "RoleBinding" {
            binding_ns.clone()
        } else {
            None
        };
        for r in role["rules"].as_array().unwrap() {
            out.push(Rule {
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                names: strings(&r["resourceNames"]),
                verbs: strings(&r["verbs"]),
                namespace: namespace.clone(),
            });
        }
    }
    out
}

/// A request as RBAC sees it: (group, resource[/subresource], verb, namespace, name).
#[derive(Debug)]
struct Attributes {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// None for non-resource URLs (discovery, `/version`), which every authenticated user may
/// read (`system:discovery`).
fn attributes(r: &RequestRecord) -> Option<Attributes> {
    let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return None,
    };
    let query: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
        .into_owned()
        .collect();
    // A list or watch narrowed to one name is authorized as that name.
    let name = name.or_else(|| {
        query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string)
    });
    let verb = match r.method.as_str() {
        "GET" if r.is_watch() => "watch",
        "GET" if rest.len() == 1 => "list",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => panic!("unexpected method {other}"),
    };
    Some(Attributes {
        group,
        resource: match sub {
            Some(s) => format!("{plural}/{s}"),
            None => plural.to_string(),
        },
        verb: verb.to_string(),
        namespace,
        name,
    })
}

fn allowed(rules: &[Rule], a: &Attributes) -> bool {
    rules.iter().any(|r| {
        r.groups.contains(&a.group)
            && r.resources.contains(&a.resource)
            && r.verbs.contains(&a.verb)
            && (r.names.is_empty() || a.name.as_ref().is_some_and(|n| r.names.contains(n)))
            && (r.namespace.is_none() || r.namespace == a.namespace)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_kubernetes_deployment_serves_within_its_rbac() {
    install_crypto();
    let docs = docs();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("a ServiceAccount");
    let container = &pod["containers"][0];
    let rules = rules_of(&docs, namespace, sa);
    assert!(!rules.is_empty(), "no RBAC for {namespace}/{sa}");

    // The API server: our kinds, ESO's, the ledger's; a federation, a store and an
    // Authorization as an operator would apply them.
    let k = FakeKube::start().await;
    for (g, v, kind, plural, namespaced, status) in [
        (
            "federation.external-secrets.io",
            "v1alpha1",
            "Authorization",
            "authorizations",
            false,
            true,
        ),
        (
            "identity.federation.external-secrets.io",
            "v1alpha1",
            "KubernetesFederation",
            "kubernetesfederations",
            false,
            true,
        ),
        (
            "external-secrets.io",
            "v1",
            "ClusterSecretStore",
            "clustersecretstores",
            false,
            true,
        ),
        (
            "generators.external-secrets.io",
            "v1alpha1",
            "Password",
            "passwords",
            true,
            false,
        ),
        (
            "generators.external-secrets.io",
            "v1alpha1",
            "GeneratorState",
            "generatorstates",
            true,
            false,
        ),
        (
            "federation.external-secrets.io",
            "v1alpha1",
            "AuthorizedIdentity",
            "authorizedidentities",
            false,
            true,
        ),
    ] {
        k.register(g, v, kind, plural, namespaced, status);
    }
    // The other federation kinds (issue 18): watched, and their status written, within
    // the same RBAC.
    for (kind, plural) in [
        ("OIDCFederation", "oidcfederations"),
        ("OktaFederation", "oktafederations"),
        ("PingIdentityFederation", "pingidentityfederations"),
        ("SpiffeFederation", "spiffefederations"),
    ] {
        k.register(
            "identity.federation.external-secrets.io",
            "v1alpha1",
            kind,
            plural,
            false,
            true,
        );
    }
    let workload = "spiffe://example.org/ns/apps/sa/app";
    k.apply(
        serde_saphyr::from_str(&spiffe_federation("spire", "example.org", AUD, &["ec-2"])).unwrap(),
    );
    k.apply(json!({
        "apiVersion": "federation.external-secrets.io/v1alpha1", "kind": "Authorization",
        "metadata": {"name": "mesh"},
        "spec": {
            "federationRef": {"kind": "SpiffeFederation", "name": "spire"},
            "subject": {"spiffe": {"spiffeID": workload}},
            "allowedClusterSecretStores": ["fake"]
        }
    }));
    let user = format!("system:serviceaccount:{namespace}:{sa}");
    k.add_user(&user);
    k.apply(serde_saphyr::from_str(&static_federation(ISS, AUD)).unwrap());
    k.apply(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
        "metadata": {"name": "fake"},
        "spec": {"provider": {"fake": {"data": [{"key": "db", "value": "from-the-chart"}]}}}
    }));
    k.apply(json!({
        "apiVersion": "federation.external-secrets.io/v1alpha1", "kind": "Authorization",
        "metadata": {"name": "app"},
        "spec": {
            "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
            "subject": {"oidc": {"issuer": ISS, "subject": "system:serviceaccount:apps:app"}},
            "allowedClusterSecretStores": ["fake"],
            "allowedGenerators": [{"name": "pw", "kind": "Password", "namespace": "apps"}]
        }
    }));
    k.apply(json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "Password",
        "metadata": {"name": "pw", "namespace": "apps"}, "spec": {"length": 12}
    }));

    // Mounts as directories.
    let root = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
    for (i, v) in pod["volumes"].as_array().unwrap().iter().enumerate() {
        let name = v["name"].as_str().unwrap().to_string();
        let dir = root.path().join(format!("volume-{i}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        if v["configMap"].is_object() {
            let cm = v["configMap"]["name"].as_str().unwrap();
            let map = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
                .unwrap_or_else(|| panic!("ConfigMap {cm}"));
            for (file, text) in map["data"].as_object().into_iter().flatten() {
                std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
            }
        } else if v["secret"].is_object() {
            std::fs::write(dir.join("tls.crt"), &ca.cert_pem).unwrap();
            std::fs::write(dir.join("tls.key"), &ca.key_pem).unwrap();
        } else if !v["emptyDir"].is_object() {
            panic!("volume {name}: a kind this test does not stand in for: {v}");
        }
        volume_dirs.insert(name, dir);
    }
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                volume_dirs[m["name"].as_str().unwrap()].clone(),
            )
        })
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap().to_string();
            if a.starts_with("--listen=") {
                return "--listen=127.0.0.1:0".into();
            }
            if a.starts_with("--metrics-listen=") {
                return "--metrics-listen=127.0.0.1:0".into();
            }
            for (path, dir) in &mounts {
                if let Some(pos) = a.find(path.as_str()) {
                    return format!("{}{}{}", &a[..pos], dir.display(), &a[pos + path.len()..]);
                }
            }
            a
        })
        .collect();
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");
    assert!(args.iter().all(|a| !a.contains("/etc/esi")), "{args:?}");

    let kubeconfig = root.path().join("kubeconfig");
    k.kubeconfig_as(&kubeconfig, &user);
    let mut cmd = Command::new(server_bin());
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", root.path());
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "metadata.name" => "esi-federation-7d9f-abcde".into(),
            (_, Value::String(f)) if f == "metadata.namespace" => namespace.to_string(),
            _ => panic!("env {name}: a source this test does not stand in for: {e}"),
        };
        cmd.env(name, value);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(rest) = l.strip_prefix("esi-server listening on ") {
                    break rest.trim().to_string();
                }
            }
            _ => {
                let _ = child.wait();
                panic!(
                    "the chart's server exited:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = client_trusting(ca.ca_pem.as_bytes());
    let start = Instant::now();
    loop {
        let ready = client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if let Ok(200) = ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready ({ready:?}):\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = mint("ec-1", &sa_claims(ISS, AUD, "apps", "app"), None);
    let resp = client
        .post(format!("{url}/secretstore/fake/secrets/db"))
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "\"from-the-chart\"");
    // A revocable-kind call records through the ledger the chart chose.
    let resp = client
        .post(format!("{url}/v1/generators/apps/Password/pw"))
        .bearer_auth(&t)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A SPIFFE workload's JWT-SVID, through the SpiffeFederation read from the API.
    let svid = mint("ec-2", &svid_claims(workload, AUD), None);
    let resp = client
        .post(format!("{url}/secretstore/fake/secrets/db"))
        .bearer_auth(&svid)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Leader: its status writes arrive, the SpiffeFederation's among them.
    let start = Instant::now();
    while !k.requests().iter().any(|r| {
        r.is_status_write()
            && r.user.as_deref() == Some(&user)
            && r.path.contains("/spiffefederations/")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no status written:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = child.kill();
    let _ = child.wait();
    let mut denied = Vec::new();
    for r in k
        .requests()
        .iter()
        .filter(|r| r.user.as_deref() == Some(&user))
    {
        if let Some(a) = attributes(r)
            && !allowed(&rules, &a)
        {
            denied.push(format!("{} {}?{} → {a:?}", r.method, r.path, r.query));
        }
    }
    assert!(
        denied.is_empty(),
        "requests the chart's RBAC does not allow:\n{}",
        denied.join("\n")
    );
    let made = k
        .requests()
        .iter()
        .filter(|r| r.user.as_deref() == Some(&user))
        .count();
    eprintln!("the server made {made} requests, all within its RBAC");
    assert!(made > 10, "the server made {made} requests");
}
