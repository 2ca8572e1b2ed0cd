//! The CRDs generated from the Rust types (`esi-server crds`, issue 10).
//!
//! Objects are checked against our `openAPIV3Schema` twice, as an API server would: the
//! structural schema (types, `required`, lengths, enums, formats) with the `jsonschema` crate,
//! and the CEL rules (`x-kubernetes-validations`) with `kube-cel`. ESE's CRDs
//! (`tests/fixtures/ese-crds/`) are checked the same way, so "valid under ESE" is tested, not
//! assumed. Objects the schema refuses are also run through the server's own loader checks
//! (`CheckedAuthorization::check`, `Federation::from_spec`): the schema never refuses what the
//! server accepts.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use esi::authn::Federation;
use esi::authz::{AuthorizationSource, CheckedAuthorization};
use esi::config::kubernetes::{FEDERATION_KINDS, served_kind};
use esi::resources::crd::{
    self, Authorization, AuthorizedIdentity, KubernetesFederation, OidcFederation, OktaFederation,
    PingIdentityFederation, SpiffeFederation,
};
use esi::resources::{
    AuthorizationSpec, KubernetesFederationSpec, MAX_MANAGEMENT_API_FIELDS, OidcFederationSpec,
    OktaFederationSpec, PingIdentityFederationSpec, SpiffeFederationSpec, management_api_problem,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

const GOLDEN: &str = "deploy/crds/esi-federation-crds.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ours() -> Vec<CustomResourceDefinition> {
    crd::crds().expect("our CRDs render")
}

fn our_crd(kind: &str) -> Value {
    ours()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn ese_crd(kind: &str) -> Value {
    let file = match kind {
        "Authorization" => "federation.external-secrets.io_authorizations.yaml",
        "AuthorizedIdentity" => "federation.external-secrets.io_authorizedidentities.yaml",
        "KubernetesFederation" => {
            "identity.federation.external-secrets.io_kubernetesfederations.yaml"
        }
        other => panic!("no ESE CRD for {other}"),
    };
    read_yaml(&root().join("tests/fixtures/ese-crds").join(file))
}

fn schema_of(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// An OpenAPI v3 (Kubernetes) schema as JSON Schema: `nullable: true` becomes a `null` type.
/// The `x-kubernetes-*` keywords are left in place (JSON Schema ignores unknown keywords).
fn as_json_schema(schema: &Value) -> Value {
    let mut out = schema.clone();
    if let Some(obj) = out.as_object_mut() {
        if obj.remove("nullable") == Some(Value::Bool(true)) {
            if let Some(Value::String(t)) = obj.get("type").cloned() {
                obj.insert("type".into(), json!([t, "null"]));
            }
            if let Some(Value::Array(values)) = obj.get_mut("enum") {
                values.push(Value::Null);
            }
        }
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            for v in props.values_mut() {
                *v = as_json_schema(v);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = obj.get_mut(key).filter(|v| v.is_object()) {
                *v = as_json_schema(v);
            }
        }
    }
    out
}

/// Every reason `schema` refuses `object`: structural errors, then CEL rule failures.
fn refusals(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&as_json_schema(schema))
        .expect("the schema compiles as JSON Schema");
    let mut out: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("structural: {e} (at {})", e.instance_path()))
        .collect();
    if let Err(errors) = kube_cel::Validator::new().validate(schema, object, None) {
        out.extend(errors.into_vec().into_iter().map(|e| format!("cel: {e}")));
    }
    out
}

fn assert_valid(what: &str, schema: &Value, object: &Value) {
    let refused = refusals(schema, object);
    assert!(
        refused.is_empty(),
        "{what} was refused: {refused:#?}\n{object:#}"
    );
}

fn ours_schema(kind: &str) -> Value {
    schema_of(&our_crd(kind)).clone()
}

fn ese_schema(kind: &str) -> Value {
    schema_of(&ese_crd(kind)).clone()
}

/// Whether the server's loader accepts this spec (parse, then its own checks).
fn server_accepts(kind: &str, spec: &Value) -> Result<(), String> {
    match kind {
        "Authorization" => {
            let spec: AuthorizationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            CheckedAuthorization::check(&AuthorizationSource {
                name: "t".into(),
                origin: "test".into(),
                spec,
            })
            .map(drop)
            .map_err(|e| e.to_string())
        }
        "KubernetesFederation" => {
            let spec: KubernetesFederationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            Federation::from_spec("t", &spec)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "OIDCFederation" => {
            let spec: OidcFederationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            Federation::from_oidc_spec("t", &spec)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "OktaFederation" => {
            let spec: OktaFederationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            // As the loader (src/config/snapshot.rs) does, before the federation is built.
            if let Some(why) = management_api_problem(spec.management_api.as_ref()) {
                return Err(why);
            }
            Federation::from_okta_spec("t", &spec)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "PingIdentityFederation" => {
            let spec: PingIdentityFederationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            if let Some(why) = management_api_problem(spec.management_api.as_ref()) {
                return Err(why);
            }
            Federation::from_ping_identity_spec("t", &spec)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        "SpiffeFederation" => {
            let spec: SpiffeFederationSpec =
                serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
            Federation::from_spiffe_spec("t", &spec)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        other => panic!("no loader for {other}"),
    }
}

fn object(api_version: &str, kind: &str, spec: Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "t"}, "spec": spec})
}

fn authorization(spec: Value) -> Value {
    object(
        "federation.external-secrets.io/v1alpha1",
        "Authorization",
        spec,
    )
}

fn federation(spec: Value) -> Value {
    object(
        "identity.federation.external-secrets.io/v1alpha1",
        "KubernetesFederation",
        spec,
    )
}

/// An object of one of the identity kinds (`identity.federation.external-secrets.io`).
/// An object of `n` string fields (`f0`…), each a Secret reference's worth of text.
fn fields(n: usize) -> Value {
    Value::Object(
        (0..n)
            .map(|i| (format!("f{i}"), json!({"name": "okta", "key": "token"})))
            .collect(),
    )
}

fn identity(kind: &str, spec: Value) -> Value {
    object(
        "identity.federation.external-secrets.io/v1alpha1",
        kind,
        spec,
    )
}

fn fixture_jwks() -> String {
    std::fs::read_to_string(
        root().join("tests/fixtures/k8s-sa-tokens/vault-k8s-legacy-rs256/jwks.derived.json"),
    )
    .unwrap()
}

fn fixture_public_key() -> String {
    std::fs::read_to_string(
        root().join("tests/fixtures/k8s-sa-tokens/vault-k8s-legacy-rs256/key.pem"),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// The golden file and the CRDs' identity.

#[test]
fn golden_file_matches_the_types() {
    let generated = crd::all_yaml().expect("render");
    let committed = std::fs::read_to_string(root().join(GOLDEN)).unwrap_or_default();
    assert!(
        generated == committed,
        "{GOLDEN} differs from what the Rust types generate. Regenerate it with\n    \
         cargo run --bin esi-server -- crds > {GOLDEN}\nand review the diff."
    );
    // The committed file is what `kubectl apply` reads: every document parses back into a CRD.
    let docs: Vec<CustomResourceDefinition> =
        serde_saphyr::from_multiple(&committed).expect("golden file parses");
    assert_eq!(docs, ours());
}

#[test]
fn esi_server_crds_prints_them() {
    let out = std::process::Command::new(common::server_bin())
        .arg("crds")
        .output()
        .expect("run esi-server crds");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        crd::all_yaml().unwrap()
    );
}

#[test]
fn groups_versions_scopes_and_names_are_eses() {
    for kind in [
        "Authorization",
        "KubernetesFederation",
        "AuthorizedIdentity",
    ] {
        let (ours, ese) = (our_crd(kind), ese_crd(kind));
        for field in [
            "/metadata/name",
            "/spec/group",
            "/spec/scope",
            "/spec/names/kind",
        ] {
            assert_eq!(ours.pointer(field), ese.pointer(field), "{kind} {field}");
        }
        for field in ["plural", "singular", "categories"] {
            assert_eq!(
                ours["spec"]["names"][field], ese["spec"]["names"][field],
                "{kind} names.{field}"
            );
        }
        let (v, e) = (&ours["spec"]["versions"][0], &ese["spec"]["versions"][0]);
        assert_eq!(ours["spec"]["versions"].as_array().unwrap().len(), 1);
        for field in ["name", "served", "storage"] {
            assert_eq!(v[field], e[field], "{kind} version {field}");
        }
        assert_eq!(
            v["subresources"]["status"],
            json!({}),
            "{kind}: status subresource"
        );
        assert!(
            schema_of(&ours)["properties"]["status"]["properties"]["conditions"].is_object(),
            "{kind}: status.conditions"
        );
    }
}

#[test]
fn printer_columns() {
    let columns = |kind: &str| -> Vec<(String, String, String)> {
        our_crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap().to_owned();
                (s("name"), s("type"), s("jsonPath"))
            })
            .collect()
    };
    let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
    let age = ".metadata.creationTimestamp";
    let col = |n: &str, t: &str, p: &str| (n.to_owned(), t.to_owned(), p.to_owned());
    assert_eq!(
        columns("Authorization"),
        [
            col("Ready", "string", ready),
            col("Federation", "string", ".spec.federationRef.name"),
            // Recursive descent: `subject.oidc.subject` or the flat `subject.subject`,
            // whichever is set (the CEL rule allows exactly one).
            col("Subject", "string", ".spec.subject..subject"),
            col("Age", "date", age),
        ]
    );
    assert_eq!(
        columns("KubernetesFederation"),
        [
            col("Ready", "string", ready),
            col("URL", "string", ".spec.url"),
            col("Age", "date", age),
        ]
    );
    assert_eq!(
        columns("OIDCFederation"),
        [
            col("Ready", "string", ready),
            col("Issuer", "string", ".spec.issuer"),
            col("Age", "date", age),
        ]
    );
    assert_eq!(
        columns("OktaFederation"),
        [
            col("Ready", "string", ready),
            col("Domain", "string", ".spec.domain"),
            col("Age", "date", age),
        ]
    );
    assert_eq!(
        columns("PingIdentityFederation"),
        [
            col("Ready", "string", ready),
            col("Region", "string", ".spec.region"),
            col("Environment", "string", ".spec.environmentId"),
            col("Age", "date", age),
        ]
    );
    assert_eq!(
        columns("SpiffeFederation"),
        [
            col("Ready", "string", ready),
            col("Trust Domain", "string", ".spec.trustDomain"),
            col("Age", "date", age),
        ]
    );
}

/// Issue 18: every federation kind the server watches in Kubernetes mode has a CRD of ours,
/// shaped like KubernetesFederation's (ESE's): same group, cluster scope, categories,
/// version, status subresource and status schema, a `Ready` column first; and every CRD of
/// ours but the ledger's is a served kind (a CRD nobody watches, or a watched kind nobody
/// can create, would be a silent gap).
#[test]
fn every_served_federation_kind_has_a_crd_like_kubernetes_federations() {
    let reference = our_crd("KubernetesFederation");
    let version = |crd: &Value| crd["spec"]["versions"][0].clone();
    for kind in FEDERATION_KINDS {
        let crd = our_crd(kind);
        let plural = format!("{}s", kind.to_lowercase());
        assert_eq!(crd["spec"]["names"]["plural"], plural, "{kind}");
        assert_eq!(
            crd["metadata"]["name"],
            format!("{plural}.identity.federation.external-secrets.io"),
            "{kind}"
        );
        for field in ["/spec/group", "/spec/scope", "/spec/names/categories"] {
            assert_eq!(
                crd.pointer(field),
                reference.pointer(field),
                "{kind} {field}"
            );
        }
        let (v, r) = (version(&crd), version(&reference));
        assert_eq!(crd["spec"]["versions"].as_array().unwrap().len(), 1);
        for field in ["name", "served", "storage", "subresources"] {
            assert_eq!(v[field], r[field], "{kind} version {field}");
        }
        assert_eq!(
            schema_of(&crd)["properties"]["status"],
            schema_of(&reference)["properties"]["status"],
            "{kind}: status"
        );
        assert_eq!(
            v["additionalPrinterColumns"][0], r["additionalPrinterColumns"][0],
            "{kind}: the Ready column"
        );
        assert!(
            served_kind(crd["spec"]["group"].as_str().unwrap(), kind),
            "{kind} is not watched"
        );
    }
    for crd in ours() {
        let (group, kind) = (&crd.spec.group, &crd.spec.names.kind);
        assert!(
            served_kind(group, kind) || kind == "AuthorizedIdentity",
            "{kind}.{group}: a CRD of ours the server does not watch"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Structural schemas.

/// Walks a schema: every node typed, no `$ref`, no `default`, no logical junctors (our
/// types have none; Kubernetes restricts what they may hold), every `x-kubernetes-list-type:
/// map` keyed by required fields. Returns the problems found, by path.
fn structural_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "$defs",
        "definitions",
        "default",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(forbidden) {
            out.push(format!("{path}: has {forbidden}"));
        }
    }
    let typed = obj.get("type").and_then(Value::as_str);
    let untyped_ok = obj.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    match typed {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        None if untyped_ok => {}
        other => out.push(format!("{path}: type {other:?}")),
    }
    // Formats Kubernetes recognizes (others draw a warning on every apply).
    let formats = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
    ];
    if let Some(format) = obj.get("format")
        && !formats.iter().any(|f| format == f)
    {
        out.push(format!("{path}: format {format}"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            structural_problems(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    } else if typed == Some("array") {
        out.push(format!("{path}: array without items"));
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if obj.contains_key("properties") {
            out.push(format!("{path}: properties and additionalProperties"));
        }
        if extra.is_object() {
            structural_problems(extra, &format!("{path}{{*}}"), out);
        }
    }
    if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
        let required: BTreeSet<&str> = obj["items"]["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for key in obj["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !required.contains(key.as_str().unwrap_or_default()) {
                out.push(format!("{path}: list-map key {key} is not required"));
            }
        }
    }
}

#[test]
fn schemas_are_structural_and_their_rules_compile() {
    for crd in ours() {
        let crd = serde_json::to_value(crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        let schema = schema_of(&crd);
        let mut problems = Vec::new();
        structural_problems(schema, &kind, &mut problems);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
        assert!(schema["nullable"].is_null(), "{kind}: nullable root");
        let props: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(props, BTreeSet::from(["spec", "status"]), "{kind}");
        let compiled = kube_cel::compile_schema(schema);
        assert!(
            !compiled.has_errors(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
    }
    // The walk finds what it looks for.
    let mut problems = Vec::new();
    structural_problems(
        &json!({"type": "object", "properties": {
            "a": {"$ref": "#/x"}, "b": {"type": "string", "default": ""}, "c": {},
            "d": {"type": "integer", "format": "uint32"}
        }}),
        "probe",
        &mut problems,
    );
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

// ---------------------------------------------------------------------------------------
// What ESE accepts, ours accepts.

#[test]
fn ese_samples_validate_against_our_schemas() {
    let samples = root().join("tests/fixtures/ese-samples/federation-server");
    // The samples write KubernetesFederation under `federation.external-secrets.io` (ESE's
    // CRD says `identity.…`): the body is checked against our schema regardless of group.
    let fed = read_yaml(&samples.join("03-federation.yaml"));
    assert_eq!(fed["kind"], "KubernetesFederation");
    assert_valid(
        "03-federation.yaml",
        &ours_schema("KubernetesFederation"),
        &fed,
    );
    assert_valid(
        "03-federation.yaml (ESE)",
        &ese_schema("KubernetesFederation"),
        &fed,
    );
    server_accepts("KubernetesFederation", &fed["spec"]).unwrap();

    // The sample's flat `subject: {issuer, subject}`: ESE's own CRD refuses it (a known ESE
    // inconsistency); ours accepts it, as ESE's server does.
    let auth = read_yaml(&samples.join("04-authorization.yaml"));
    assert_eq!(auth["kind"], "Authorization");
    assert_valid(
        "04-authorization.yaml",
        &ours_schema("Authorization"),
        &auth,
    );
    assert!(!refusals(&ese_schema("Authorization"), &auth).is_empty());
    server_accepts("Authorization", &auth["spec"]).unwrap();

    // The kube types read them (the Kubernetes watcher's view of the same objects).
    let typed: Authorization = serde_json::from_value(auth.clone()).unwrap();
    assert_eq!(
        *typed.spec,
        serde_json::from_value::<AuthorizationSpec>(auth["spec"].clone()).unwrap()
    );
    let typed: KubernetesFederation = serde_json::from_value(fed.clone()).unwrap();
    assert_eq!(
        typed.spec.url.as_deref(),
        Some("https://kubernetes.default.svc.cluster.local")
    );
}

/// Objects in ESE's CRD form, each valid under ESE's schema (checked) and so under ours.
fn ese_form_objects() -> Vec<(&'static str, &'static str, Value)> {
    let oidc = json!({
        "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
        "subject": {"oidc": {
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "subject": "system:serviceaccount:monitoring:prometheus"
        }},
        "allowedClusterSecretStores": ["vault-prod"],
        "allowedGenerators": [{
            "apiVersion": "generators.external-secrets.io/v1alpha1",
            "kind": "VaultDynamicSecret", "name": "db", "namespace": "default"
        }],
        "allowedGeneratorStates": [{"namespace": "default"}]
    });
    let spiffe = json!({
        "federationRef": {"kind": "SpiffeFederation", "name": "mesh"},
        "subject": {"spiffe": {"spiffeID": "spiffe://example.org/ns/default/sa/app"}},
        "allowedClusterSecretStores": [],
        "allowedGenerators": [],
        "allowedGeneratorStates": []
    });
    let identity = json!({
        "identitySpec": {
            "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
            "subject": {"oidc": {
                "issuer": "https://kubernetes.default.svc.cluster.local",
                "subject": "system:serviceaccount:default:app"
            }}
        },
        "issuedCredentials": [
            {
                "sourceRef": {
                    "apiVersion": "generators.external-secrets.io/v1alpha1",
                    "kind": "VaultDynamicSecret", "name": "db", "namespace": "default"
                },
                "stateRef": {
                    "apiVersion": "generators.external-secrets.io/v1alpha1",
                    "kind": "GeneratorState", "name": "db-x7k2p", "namespace": "default"
                },
                "workloadBinding": {
                    "kind": "Pod", "name": "app-0", "namespace": "default",
                    "uid": "5b1c8f4e-2d7a-4c1e-9a3b-0f6e8d2c4a11"
                },
                "lastIssuedAt": "2025-06-01T12:00:00Z"
            },
            {
                "sourceRef": {
                    "apiVersion": "external-secrets.io/v1",
                    "kind": "ClusterSecretStore", "name": "vault-prod"
                },
                "remoteRef": {"remoteKey": "db-credentials", "property": "password"}
            }
        ]
    });
    let spiffe_identity = json!({
        "identitySpec": {
            "federationRef": {"kind": "SpiffeFederation", "name": "mesh"},
            "subject": {"spiffe": {"spiffeID": "spiffe://example.org/app"}}
        },
        "issuedCredentials": []
    });
    vec![
        ("oidc subject", "Authorization", authorization(oidc)),
        ("spiffe subject", "Authorization", authorization(spiffe)),
        (
            "url only",
            "KubernetesFederation",
            federation(json!({"url": "https://kubeapi.alpha.example.com"})),
        ),
        (
            "issued credentials",
            "AuthorizedIdentity",
            object(
                "federation.external-secrets.io/v1alpha1",
                "AuthorizedIdentity",
                identity,
            ),
        ),
        (
            "spiffe identity, none issued",
            "AuthorizedIdentity",
            object(
                "federation.external-secrets.io/v1alpha1",
                "AuthorizedIdentity",
                spiffe_identity,
            ),
        ),
    ]
}

#[test]
fn ese_crd_form_objects_validate_against_ours() {
    for (what, kind, obj) in ese_form_objects() {
        assert_valid(&format!("{what} (ESE)"), &ese_schema(kind), &obj);
        assert_valid(what, &ours_schema(kind), &obj);
    }
    // The server serves both subject forms: OIDC and SPIFFE (JWT-SVIDs, docs/identities.md).
    let objects = ese_form_objects();
    server_accepts("Authorization", &objects[0].2["spec"]).unwrap();
    server_accepts("Authorization", &objects[1].2["spec"]).unwrap();
    server_accepts("KubernetesFederation", &objects[2].2["spec"]).unwrap();
    // The AuthorizedIdentity reads into our type.
    let typed: AuthorizedIdentity = serde_json::from_value(objects[3].2.clone()).unwrap();
    assert_eq!(typed.spec.issued_credentials.len(), 2);
}

/// ESE's identity kinds in ESE's shape (ESE publishes no CRD for them here; its types name
/// these fields): valid under ours, so ESE's manifests apply. A `SpiffeFederation` with
/// only ESE's `trustDomain` applies and the server says in its status why it serves nothing
/// (no audiences, no bundle): the schema does not refuse what ESE's objects hold.
#[test]
fn ese_form_identity_objects_validate_against_ours() {
    let spiffe = identity("SpiffeFederation", json!({"trustDomain": "example.org"}));
    assert_valid(
        "SpiffeFederation (ESE)",
        &ours_schema("SpiffeFederation"),
        &spiffe,
    );
    let why = server_accepts("SpiffeFederation", &spiffe["spec"]).unwrap_err();
    assert!(why.contains("audiences"), "{why}");
    let typed: SpiffeFederation = serde_json::from_value(spiffe).unwrap();
    assert_eq!(typed.spec.trust_domain, "example.org");

    let management = json!({"clientId": "0oa1", "secretRef": {"name": "okta", "key": "token"}});
    let okta = identity(
        "OktaFederation",
        json!({
            "domain": "https://dev-12345.okta.com",
            "authorizationServerId": "default",
            "managementAPI": management
        }),
    );
    let ping = identity(
        "PingIdentityFederation",
        json!({
            "region": "eu",
            "environmentId": "1f2e3d4c-0000-4000-8000-000000000001",
            "managementAPI": management
        }),
    );
    for (kind, obj) in [("OktaFederation", &okta), ("PingIdentityFederation", &ping)] {
        assert_valid(&format!("{kind} (ESE)"), &ours_schema(kind), obj);
        // Served, without an audience check (as ESE), with a warning in its status.
        server_accepts(kind, &obj["spec"]).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    // Up to the bound, any fields: ESE's block as it comes.
    for kind in ["OktaFederation", "PingIdentityFederation"] {
        let mut obj = if kind == "OktaFederation" {
            okta.clone()
        } else {
            ping.clone()
        };
        obj["spec"]["managementAPI"] = fields(MAX_MANAGEMENT_API_FIELDS);
        assert_valid(&format!("{kind} (bound)"), &ours_schema(kind), &obj);
        server_accepts(kind, &obj["spec"]).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    let typed: OktaFederation = serde_json::from_value(okta).unwrap();
    assert_eq!(typed.spec.management_api, Some(management.clone()));
    let typed: PingIdentityFederation = serde_json::from_value(ping).unwrap();
    assert_eq!(typed.spec.region, "eu");
}

#[test]
fn the_ese_checks_can_refuse() {
    // Controls: the validators used above do refuse what ESE's CRDs refuse.
    let ese = ese_schema("Authorization");
    let mut both = ese_form_objects()[0].2.clone();
    both["spec"]["subject"]["spiffe"] = json!({"spiffeID": "spiffe://x/y"});
    let refused = refusals(&ese, &both);
    assert!(
        refused.iter().any(|r| r.starts_with("structural")),
        "{refused:#?}"
    ); // maxProperties
    let mut missing = ese_form_objects()[0].2.clone();
    missing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("allowedGenerators");
    assert!(!refusals(&ese, &missing).is_empty());
    let fed = ese_schema("KubernetesFederation");
    assert!(!refusals(&fed, &federation(json!({"url": 3}))).is_empty());
    assert!(!refusals(&fed, &federation(json!({}))).is_empty());
}

// ---------------------------------------------------------------------------------------
// Our extensions: valid under ours, and served.

#[test]
fn extension_objects_validate_and_are_served() {
    let jwks = fixture_jwks();
    let ca = common::b64(&common::test_ca().ca_pem);
    let cases = [
        (
            "flat subject with a glob, no federationRef.kind, remote keys",
            "Authorization",
            authorization(json!({
                "federationRef": {"name": "alpha"},
                "subject": {
                    "issuer": "https://kubernetes.default.svc.cluster.local",
                    "subject": "system:serviceaccount:team-*:app"
                },
                "allowedClusterSecretStores": ["vault-prod", "vault-dev"],
                "allowedRemoteKeys": {"vault-prod": ["db-credentials", "api-keys/*"]}
            })),
        ),
        (
            "url with every extension",
            "KubernetesFederation",
            federation(json!({
                "url": "https://kubeapi.alpha.example.com",
                "issuer": "https://kubernetes.default.svc.cluster.local",
                "audiences": ["https://esi-federation.example.com"],
                "clientCAPolicy": "Ignore",
                "allowLegacyTokens": false
            })),
        ),
        (
            "static jwks without url",
            "KubernetesFederation",
            federation(json!({"jwks": jwks, "issuer": "https://issuer.example.com"})),
        ),
        (
            "static public keys without url",
            "KubernetesFederation",
            federation(json!({
                "publicKeys": [fixture_public_key()],
                "issuer": "https://issuer.example.com"
            })),
        ),
        (
            "OIDC federation with every field but jwks",
            "OIDCFederation",
            identity(
                "OIDCFederation",
                json!({
                    "issuer": "https://token.actions.githubusercontent.com",
                    "audiences": ["https://esi-federation.example.com"],
                    "jwksUri": "https://token.actions.githubusercontent.com/.well-known/jwks",
                    "caBundle": ca,
                    "subjectClaim": "sub",
                    "boundClaims": {"repository_owner": "org", "ref": "refs/heads/*"},
                    "claims": ["repository", "ref", "environment"]
                }),
            ),
        ),
        (
            "OIDC federation with static jwks",
            "OIDCFederation",
            identity(
                "OIDCFederation",
                json!({"issuer": "https://gitlab.example.com", "audiences": ["esi"], "jwks": jwks}),
            ),
        ),
        (
            "Okta preset with the OIDC extensions",
            "OktaFederation",
            identity(
                "OktaFederation",
                json!({
                    "domain": "https://dev-12345.okta.com",
                    "audiences": ["api://esi"],
                    "caBundle": ca,
                    "boundClaims": {"cid": "0oa*"},
                    "claims": ["cid"]
                }),
            ),
        ),
        (
            "PingIdentity preset with audiences",
            "PingIdentityFederation",
            identity(
                "PingIdentityFederation",
                json!({"region": "com", "environmentId": "abc-123", "audiences": ["esi"]}),
            ),
        ),
        (
            "SPIFFE federation with a static bundle",
            "SpiffeFederation",
            identity(
                "SpiffeFederation",
                json!({
                    "trustDomain": "example.org",
                    "audiences": ["esi"],
                    "bundle": common::spiffe_bundle(&["ec-1", "rsa-1"])
                }),
            ),
        ),
        (
            "SPIFFE federation with a bundle endpoint",
            "SpiffeFederation",
            identity(
                "SpiffeFederation",
                json!({
                    "trustDomain": "example.org",
                    "audiences": ["esi"],
                    "bundleEndpoint": {"url": "https://spire.example.org:8443", "caBundle": ca}
                }),
            ),
        ),
    ];
    for (what, kind, obj) in cases {
        assert_valid(what, &ours_schema(kind), &obj);
        server_accepts(kind, &obj["spec"]).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // The kube type reads them (the Kubernetes watcher's view of the same objects).
    let typed: OidcFederation = serde_json::from_value(identity(
        "OIDCFederation",
        json!({"issuer": "https://i.example.com", "audiences": ["esi"], "claims": ["repository"]}),
    ))
    .unwrap();
    assert_eq!(typed.spec.common.claims, ["repository"]);
}

// ---------------------------------------------------------------------------------------
// What the server refuses, the schema refuses (where a rule can tell).

/// Which check refuses: a structural one, or the CEL rule whose message holds this text.
#[derive(Debug)]
enum By {
    Structure,
    Rule(&'static str),
}

#[test]
fn server_rejections_are_refused_by_the_schema() {
    let oidc = json!({"issuer": "https://i.example.com", "subject": "system:serviceaccount:a:b"});
    let auth = |patch: Value| {
        let mut spec = json!({
            "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
            "subject": {"oidc": oidc.clone()},
            "allowedClusterSecretStores": ["vault-prod"]
        });
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        authorization(spec)
    };
    let exactly_one = By::Rule("set exactly one of oidc, spiffe");
    let cases = [
        (
            "oidc and the flat form",
            auth(json!({"subject": {"oidc": oidc, "issuer": "https://i", "subject": "s"}})),
            exactly_one,
        ),
        (
            "oidc and spiffe",
            auth(json!({"subject": {"oidc": oidc, "spiffe": {"spiffeID": "spiffe://x/y"}}})),
            By::Rule("set exactly one of oidc, spiffe"),
        ),
        (
            "empty subject",
            auth(json!({"subject": {}})),
            By::Rule("set exactly one of oidc, spiffe"),
        ),
        (
            "flat issuer without subject",
            auth(json!({"subject": {"issuer": "https://i.example.com"}})),
            By::Rule("the flat form needs both issuer and subject"),
        ),
        (
            "flat subject without issuer",
            auth(json!({"subject": {"subject": "system:serviceaccount:a:b"}})),
            By::Rule("the flat form needs both issuer and subject"),
        ),
        (
            "flat empty subject",
            auth(json!({"subject": {"issuer": "https://i.example.com", "subject": ""}})),
            By::Structure,
        ),
        (
            "oidc without subject",
            auth(json!({"subject": {"oidc": {"issuer": "https://i.example.com"}}})),
            By::Structure,
        ),
        ("no subject", auth(json!({"subject": null})), By::Structure),
        (
            "federationRef without name",
            auth(json!({"federationRef": {"kind": "KubernetesFederation"}})),
            By::Structure,
        ),
        (
            "generator without namespace",
            auth(json!({"allowedGenerators": [{"kind": "Password", "name": "p"}]})),
            By::Structure,
        ),
        (
            "generator state without namespace",
            auth(json!({"allowedGeneratorStates": [{}]})),
            By::Structure,
        ),
        (
            "remote keys: no pattern",
            auth(json!({"allowedRemoteKeys": {"vault-prod": []}})),
            By::Structure,
        ),
        (
            "remote keys: empty pattern",
            auth(json!({"allowedRemoteKeys": {"vault-prod": [""]}})),
            By::Structure,
        ),
        (
            "federation: no key source",
            federation(json!({"audiences": ["a"]})),
            By::Rule("set url, jwks or publicKeys"),
        ),
        (
            "federation: empty publicKeys, no url",
            federation(json!({"publicKeys": [], "issuer": "https://i.example.com"})),
            By::Rule("set url, jwks or publicKeys"),
        ),
        (
            "federation: static keys without issuer",
            federation(json!({"jwks": fixture_jwks()})),
            By::Rule("without url, set issuer"),
        ),
        (
            "federation: empty issuer",
            federation(json!({"url": "https://k.example.com", "issuer": ""})),
            By::Structure,
        ),
        (
            "federation: empty audience",
            federation(json!({"url": "https://k.example.com", "audiences": [""]})),
            By::Structure,
        ),
        (
            "federation: unknown clientCAPolicy",
            federation(json!({"url": "https://k.example.com", "clientCAPolicy": "Always"})),
            By::Structure,
        ),
        (
            "OIDC federation: empty audiences",
            identity(
                "OIDCFederation",
                json!({"issuer": "https://i.example.com", "audiences": []}),
            ),
            By::Rule("set audiences"),
        ),
        (
            "OIDC federation: no audiences",
            identity("OIDCFederation", json!({"issuer": "https://i.example.com"})),
            By::Structure,
        ),
        (
            "OIDC federation: no issuer",
            identity("OIDCFederation", json!({"audiences": ["esi"]})),
            By::Structure,
        ),
        (
            "OIDC federation: empty issuer",
            identity(
                "OIDCFederation",
                json!({"issuer": "", "audiences": ["esi"]}),
            ),
            By::Structure,
        ),
        (
            "OIDC federation: empty audience",
            identity(
                "OIDCFederation",
                json!({"issuer": "https://i.example.com", "audiences": [""]}),
            ),
            By::Structure,
        ),
        (
            "SPIFFE federation: no trustDomain",
            identity(
                "SpiffeFederation",
                json!({"audiences": ["esi"], "bundle": common::spiffe_bundle(&["ec-1"])}),
            ),
            By::Structure,
        ),
        (
            "SPIFFE federation: empty trustDomain",
            identity(
                "SpiffeFederation",
                json!({"trustDomain": "", "audiences": ["esi"], "bundle": common::spiffe_bundle(&["ec-1"])}),
            ),
            By::Structure,
        ),
        (
            "SPIFFE federation: bundleEndpoint without url",
            identity(
                "SpiffeFederation",
                json!({"trustDomain": "example.org", "audiences": ["esi"], "bundleEndpoint": {}}),
            ),
            By::Structure,
        ),
        (
            "SPIFFE federation: empty audience",
            identity(
                "SpiffeFederation",
                json!({"trustDomain": "example.org", "audiences": [""], "bundle": common::spiffe_bundle(&["ec-1"])}),
            ),
            By::Structure,
        ),
        (
            "Okta preset: no domain",
            identity("OktaFederation", json!({"audiences": ["esi"]})),
            By::Structure,
        ),
        (
            "PingIdentity preset: no environmentId",
            identity("PingIdentityFederation", json!({"region": "eu"})),
            By::Structure,
        ),
        // `managementAPI` is accepted and unused, but bounded.
        (
            "Okta preset: managementAPI with too many fields",
            identity(
                "OktaFederation",
                json!({"domain": "https://dev-1.okta.com", "managementAPI": fields(MAX_MANAGEMENT_API_FIELDS + 1)}),
            ),
            By::Structure,
        ),
        (
            "PingIdentity preset: managementAPI with too many fields",
            identity(
                "PingIdentityFederation",
                json!({"region": "eu", "environmentId": "e", "managementAPI": fields(MAX_MANAGEMENT_API_FIELDS + 1)}),
            ),
            By::Structure,
        ),
        (
            "Okta preset: managementAPI not an object",
            identity(
                "OktaFederation",
                json!({"domain": "https://dev-1.okta.com", "managementAPI": "token"}),
            ),
            By::Structure,
        ),
    ];
    // The one object ESE's Authorization CRD accepts and ours refuses: one without `spec`
    // (the typed watcher needs a spec; the server refuses it too).
    let mut no_spec = auth(json!({}));
    no_spec.as_object_mut().unwrap().remove("spec");
    assert_valid("no spec (ESE)", &ese_schema("Authorization"), &no_spec);
    let cases = cases
        .into_iter()
        .chain([("no spec", no_spec, By::Structure)]);
    let mut failures = Vec::new();
    for (what, obj, by) in cases {
        let kind = obj["kind"].as_str().unwrap();
        if server_accepts(kind, &obj["spec"]).is_ok() {
            failures.push(format!(
                "{what}: the server accepts it, so the schema must too"
            ));
        }
        let refused = refusals(&ours_schema(kind), &obj);
        let matched = match &by {
            By::Structure => refused.iter().any(|r| r.starts_with("structural:")),
            By::Rule(text) => refused
                .iter()
                .any(|r| r.starts_with("cel:") && r.contains(text)),
        };
        if !matched {
            failures.push(format!(
                "{what}: expected a refusal by {by:?}, got {refused:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// Status and the ledger kind, written from the Rust types.

#[test]
fn status_holds_kubernetes_conditions() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let condition = |status: &str, reason: &str| Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: "spec.subject is missing".into(),
        last_transition_time: Time("2025-06-01T12:00:00Z".parse().unwrap()),
        observed_generation: Some(3),
    };
    let mut auth = Authorization::new("t", AuthorizationSpec::default().into());
    auth.status = Some(crd::ResourceStatus {
        conditions: vec![condition("False", "InvalidSpec")],
        observed_generation: Some(3),
    });
    let value = serde_json::to_value(&auth).unwrap();
    let schema = ours_schema("Authorization");
    let status_refusals = |v: &Value| {
        refusals(&schema, v)
            .into_iter()
            .filter(|r| r.contains("/status"))
            .collect::<Vec<_>>()
    };
    assert_eq!(status_refusals(&value), Vec::<String>::new());
    assert_eq!(
        serde_json::from_value::<Authorization>(value)
            .unwrap()
            .status,
        auth.status
    );
    for (status, reason) in [("Maybe", "Ok"), ("True", ""), ("True", "not camel")] {
        auth.status.as_mut().unwrap().conditions = vec![condition(status, reason)];
        let value = serde_json::to_value(&auth).unwrap();
        assert!(
            !status_refusals(&value).is_empty(),
            "{status}/{reason} accepted"
        );
    }
}

#[test]
fn authorized_identity_written_by_us_is_valid_under_ese_and_ours() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let at = |s: &str| Some(Time(s.parse().unwrap()));
    let generator = crd::ObjectRef {
        api_version: "generators.external-secrets.io/v1alpha1".into(),
        kind: "Password".into(),
        name: "p".into(),
        namespace: Some("default".into()),
    };
    let identity = AuthorizedIdentity::new(
        "alpha-default-app",
        crd::AuthorizedIdentitySpec {
            identity_spec: crd::IdentitySpec {
                federation_ref: esi::resources::FederationRef {
                    kind: "KubernetesFederation".into(),
                    name: "alpha".into(),
                },
                subject: crd::IdentitySubject {
                    oidc: Some(esi::resources::OidcSubject {
                        issuer: "https://kubernetes.default.svc.cluster.local".into(),
                        subject: "system:serviceaccount:default:app".into(),
                    }),
                    spiffe: None,
                },
            },
            issued_credentials: vec![
                crd::IssuedCredential {
                    source_ref: generator.clone(),
                    state_ref: Some(crd::ObjectRef {
                        kind: "GeneratorState".into(),
                        name: "p-1".into(),
                        ..generator.clone()
                    }),
                    workload_binding: Some(crd::WorkloadBinding {
                        kind: "Pod".into(),
                        name: "app-0".into(),
                        namespace: "default".into(),
                        uid: "5b1c8f4e-2d7a-4c1e-9a3b-0f6e8d2c4a11".into(),
                        service_account_name: Some("app".into()),
                    }),
                    last_issued_at: at("2025-06-01T12:00:00Z"),
                    credential_id: Some("0d3c1f5e-8a9b-4c2d-b7e6-1f2a3b4c5d6e".into()),
                    expires_at: at("2025-06-01T13:00:00Z"),
                    renewable: Some(true),
                    retry_at: at("2025-06-01T13:00:30Z"),
                    attempts: Some(1),
                    last_error: Some("backend answered 503".into()),
                    requested_by: Some("system:serviceaccount:default:app".into()),
                    ..Default::default()
                },
                crd::IssuedCredential {
                    source_ref: generator,
                    ..Default::default()
                },
            ],
        },
    );
    let value = serde_json::to_value(&identity).unwrap();
    assert_valid(
        "our AuthorizedIdentity",
        &ours_schema("AuthorizedIdentity"),
        &value,
    );
    // ESE's schema ignores (Kubernetes would prune) the extension fields; ESE's fields are
    // written in ESE's shape.
    assert_valid(
        "our AuthorizedIdentity (ESE)",
        &ese_schema("AuthorizedIdentity"),
        &value,
    );
    assert_eq!(
        serde_json::from_value::<AuthorizedIdentity>(value)
            .unwrap()
            .spec,
        identity.spec
    );
}
