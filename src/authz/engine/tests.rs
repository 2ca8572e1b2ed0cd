//! Tests of the policy engine: ESE sample, CONTRACT example, policy files, injection,
//! fail-closed forbids, and sharded-vs-flat equivalence.

use std::path::PathBuf;

use cedar_policy::{PolicySet, ValidationMode, Validator};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::*;
use crate::resources::{
    AllowedGenerator, AllowedGeneratorState, AuthorizationSpec, AuthorizationSubject,
    FederationRef, OidcSubject,
};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn identity(federation: &str, issuer: &str, namespace: &str, sa: &str) -> Identity {
    let mut id = Identity::of_service_account(federation, issuer, namespace, sa);
    if let Some(sa) = id.service_account_mut() {
        sa.uid = Some("0d5c1a2b-uid".to_owned());
    }
    id
}

fn key(store: &str, key: &str) -> Resource {
    Resource::RemoteKey {
        store: store.to_owned(),
        key: key.to_owned(),
    }
}

fn store(store: &str) -> Resource {
    Resource::Store {
        store: store.to_owned(),
    }
}

fn generator(namespace: &str, kind: &str, name: &str) -> Resource {
    Resource::Generator {
        namespace: namespace.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn states(namespace: &str) -> Resource {
    Resource::GeneratorStates {
        namespace: namespace.to_owned(),
    }
}

#[derive(Deserialize)]
struct Manifest {
    metadata: crate::resources::ObjectMeta,
    spec: AuthorizationSpec,
}

fn authorization(origin: &str, yaml: &str) -> AuthorizationSource {
    let m: Manifest = serde_saphyr::from_str(yaml).expect("test manifest parses");
    AuthorizationSource {
        name: m.metadata.name,
        origin: origin.to_owned(),
        spec: m.spec,
    }
}

fn file(path: &str, text: &str) -> PolicyFile {
    PolicyFile {
        path: PathBuf::from(path),
        text: text.to_owned(),
    }
}

/// An engine and the flat reference it must agree with: every policy it stands for in one
/// Cedar set, built here from the same sources (compiled eagerly, unsharded).
struct Tested {
    engine: PolicyEngine,
    flat: PolicySet,
}

impl std::ops::Deref for Tested {
    type Target = PolicyEngine;
    fn deref(&self) -> &PolicyEngine {
        &self.engine
    }
}

impl Tested {
    fn new(engine: PolicyEngine, auths: &[AuthorizationSource]) -> Self {
        let mut flat = engine.global.clone();
        let mut names = HashSet::new();
        for a in auths {
            // The first of one name wins; one that does not compile grants nothing.
            if !names.insert(a.name.as_str()) {
                continue;
            }
            if let Ok(c) = compile::compile(&a.name, &canonical_spec(&a.spec)) {
                for (_, p) in c.policies {
                    flat.add(p).expect("unique ids");
                }
            }
        }
        Tested { engine, flat }
    }

    /// The flat, unsharded evaluation.
    fn reference_allows(&self, identity: &Identity, action: Action, resource: &Resource) -> bool {
        let Ok((request, entities)) = build_request(
            &DecisionKey::new(identity, action, resource.clone(), None),
            &RequestContext::now(None),
        ) else {
            return false;
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.flat, &entities);
        let mut outcome = Outcome::default();
        outcome.absorb(&self.flat, &response);
        outcome.finish().allowed
    }
}

fn build_ok(auths: &[AuthorizationSource], files: &[PolicyFile]) -> Tested {
    let (engine, errors) = PolicyEngine::build(auths, files);
    assert!(errors.is_empty(), "unexpected load errors: {errors:?}");
    Tested::new(engine, auths)
}

fn allowed(engine: &Tested, who: &Identity, action: Action, what: &Resource) -> bool {
    let decision = engine.decide(who, action, what);
    // Every decision must also agree with the flat reference.
    assert_eq!(
        decision.allowed,
        engine.reference_allows(who, action, what),
        "sharded and flat disagree on {action} {what} for {who:?}"
    );
    decision.allowed
}

#[test]
fn schema_and_vocabulary_load() {
    assert!(SCHEMA.is_ok(), "{:?}", SCHEMA.as_ref().err());
    assert!(VOCABULARY.is_some());
}

#[test]
fn engine_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<PolicyEngine>();
}

#[test]
fn empty_engine_denies_everything() {
    let engine = PolicyEngine::empty();
    assert_eq!(engine.policy_count(), 0);
    let who = identity("f", ISSUER, "ns", "sa");
    for (action, what) in [
        (Action::Get, key("s", "k")),
        (Action::Find, store("s")),
        (Action::Generate, generator("ns", "Fake", "g")),
        (Action::Revoke, generator("ns", "Fake", "g")),
        (Action::RevokeStates, states("ns")),
    ] {
        assert_eq!(
            engine.decide(&who, action, &what),
            Decision {
                allowed: false,
                policy_ids: vec![]
            }
        );
    }
}

const ESE_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ese-samples/federation-server/04-authorization.yaml"
);

#[test]
fn ese_sample_authorization_allows_exactly_what_it_names() {
    let yaml = std::fs::read_to_string(ESE_SAMPLE).expect("ESE sample present");
    let engine = build_ok(&[authorization(ESE_SAMPLE, &yaml)], &[]);
    assert_eq!(engine.policy_count(), 3);

    let fed = "current-cluster-federation";
    let sa = identity(fed, ISSUER, "federation-example", "federation-sa");
    let fake = generator("federation-example", "Fake", "federation-generator");

    let d = engine.decide(&sa, Action::Get, &key("federation-secret-store", "any/key"));
    assert_eq!(
        d,
        Decision {
            allowed: true,
            policy_ids: vec!["authorization/current-cluster-auth/stores".into()]
        }
    );
    assert!(allowed(
        &engine,
        &sa,
        Action::Get,
        &key("federation-secret-store", "")
    ));
    assert!(allowed(
        &engine,
        &sa,
        Action::Find,
        &store("federation-secret-store")
    ));
    assert!(allowed(&engine, &sa, Action::Generate, &fake));
    assert!(allowed(&engine, &sa, Action::Revoke, &fake));
    assert!(allowed(
        &engine,
        &sa,
        Action::RevokeStates,
        &states("federation-example")
    ));

    // Another SA, same namespace and federation.
    let other_sa = identity(fed, ISSUER, "federation-example", "other-sa");
    assert!(!allowed(
        &engine,
        &other_sa,
        Action::Get,
        &key("federation-secret-store", "k")
    ));
    // Same SA name in another namespace.
    let other_ns = identity(fed, ISSUER, "other", "federation-sa");
    assert!(!allowed(&engine, &other_ns, Action::Generate, &fake));
    // Same SA through another federation.
    let other_fed = identity(
        "other-federation",
        ISSUER,
        "federation-example",
        "federation-sa",
    );
    assert!(!allowed(
        &engine,
        &other_fed,
        Action::Get,
        &key("federation-secret-store", "k")
    ));
    assert!(!allowed(&engine, &other_fed, Action::Generate, &fake));
    // Another issuer.
    let other_iss = identity(
        fed,
        "https://evil.example",
        "federation-example",
        "federation-sa",
    );
    assert!(!allowed(
        &engine,
        &other_iss,
        Action::Get,
        &key("federation-secret-store", "k")
    ));
    // Another store.
    assert!(!allowed(
        &engine,
        &sa,
        Action::Get,
        &key("other-store", "k")
    ));
    assert!(!allowed(&engine, &sa, Action::Find, &store("other-store")));
    // Another generator kind, namespace, name.
    assert!(!allowed(
        &engine,
        &sa,
        Action::Generate,
        &generator("federation-example", "Password", "federation-generator")
    ));
    assert!(!allowed(
        &engine,
        &sa,
        Action::Generate,
        &generator("default", "Fake", "federation-generator")
    ));
    assert!(!allowed(
        &engine,
        &sa,
        Action::Revoke,
        &generator("federation-example", "Fake", "other")
    ));
    // States of another namespace.
    assert!(!allowed(
        &engine,
        &sa,
        Action::RevokeStates,
        &states("default")
    ));
    // Mismatched action/resource pairs are denied, not evaluated.
    assert!(
        !engine
            .decide(&sa, Action::Get, &store("federation-secret-store"))
            .allowed
    );
    assert!(
        !engine
            .decide(&sa, Action::Find, &key("federation-secret-store", "k"))
            .allowed
    );
    assert!(!engine.decide(&sa, Action::RevokeStates, &fake).allowed);
}

const CONTRACT_EXAMPLE: &str = r#"
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {name: allow-alpha-monitoring}
spec:
  federationRef: {kind: KubernetesFederation, name: client-cluster-alpha}
  subject:
    oidc:
      issuer: https://kubernetes.default.svc.cluster.local
      subject: system:serviceaccount:monitoring:*
  allowedClusterSecretStores: [vault-prod, vault-shared]
  allowedGenerators:
    - {name: vault-app-creds-generator, kind: VaultDynamicSecret, namespace: default}
  allowedGeneratorStates:
    - {namespace: default}
  allowedRemoteKeys:
    vault-prod: ["db-credentials", "api-keys/*"]
"#;

#[test]
fn contract_example_with_glob_subject_and_remote_keys() {
    let engine = build_ok(&[authorization("contract.yaml", CONTRACT_EXAMPLE)], &[]);
    let fed = "client-cluster-alpha";
    let prom = identity(fed, ISSUER, "monitoring", "prometheus-esi-client");
    let grafana = identity(fed, ISSUER, "monitoring", "grafana");

    // Restricted store: only the globbed keys, no find.
    for who in [&prom, &grafana] {
        assert!(allowed(
            &engine,
            who,
            Action::Get,
            &key("vault-prod", "db-credentials")
        ));
        assert!(allowed(
            &engine,
            who,
            Action::Get,
            &key("vault-prod", "api-keys/stripe")
        ));
        assert!(allowed(
            &engine,
            who,
            Action::Get,
            &key("vault-prod", "api-keys/")
        ));
    }
    assert!(!allowed(
        &engine,
        &prom,
        Action::Get,
        &key("vault-prod", "db-credentials-2")
    ));
    assert!(!allowed(
        &engine,
        &prom,
        Action::Get,
        &key("vault-prod", "x/db-credentials")
    ));
    assert!(!allowed(
        &engine,
        &prom,
        Action::Get,
        &key("vault-prod", "api-keys")
    ));
    assert!(!allowed(&engine, &prom, Action::Find, &store("vault-prod")));
    let d = engine.decide(&prom, Action::Get, &key("vault-prod", "api-keys/x"));
    assert_eq!(
        d.policy_ids,
        ["authorization/allow-alpha-monitoring/remote-keys"]
    );

    // Unrestricted store: any key and find.
    assert!(allowed(
        &engine,
        &prom,
        Action::Get,
        &key("vault-shared", "anything")
    ));
    assert!(allowed(
        &engine,
        &prom,
        Action::Find,
        &store("vault-shared")
    ));

    // Generators and states.
    let vds = generator("default", "VaultDynamicSecret", "vault-app-creds-generator");
    assert!(allowed(&engine, &prom, Action::Generate, &vds));
    assert!(allowed(
        &engine,
        &prom,
        Action::RevokeStates,
        &states("default")
    ));

    // The glob is `system:serviceaccount:monitoring:*` — not another namespace, not a
    // prefix trick, not another federation.
    let other_ns = identity(fed, ISSUER, "monitoring-evil", "prometheus-esi-client");
    assert!(!allowed(
        &engine,
        &other_ns,
        Action::Get,
        &key("vault-shared", "k")
    ));
    let other_fed = identity("client-cluster-beta", ISSUER, "monitoring", "grafana");
    assert!(!allowed(
        &engine,
        &other_fed,
        Action::Get,
        &key("vault-shared", "k")
    ));
    let other_iss = identity(fed, "https://other", "monitoring", "grafana");
    assert!(!allowed(
        &engine,
        &other_iss,
        Action::Get,
        &key("vault-shared", "k")
    ));
}

/// Compiled Authorization policies validate against the schema in strict mode.
#[test]
fn compiled_policies_validate_against_the_schema() {
    let yaml = std::fs::read_to_string(ESE_SAMPLE).expect("ESE sample present");
    let mut set = PolicySet::new();
    for source in [
        authorization(ESE_SAMPLE, &yaml),
        authorization("contract.yaml", CONTRACT_EXAMPLE),
    ] {
        let compiled = compile::compile(&source.name, &source.spec).expect("compiles");
        for (_, p) in compiled.policies {
            set.add(p).expect("unique ids");
        }
    }
    assert_eq!(set.num_of_policies(), 7);
    let schema = SCHEMA.as_ref().expect("schema").clone();
    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
    assert!(result.validation_passed(), "{errors:?}");
}

const FORBID_PROD_ADMIN: &str = r#"
// Nobody gets admin keys of vault-shared, whatever an Authorization says.
@id("forbid-prod-admin")
forbid (
  principal,
  action == Esi::Action::"get",
  resource in Esi::Store::"vault-shared"
) when { resource.key like "admin/*" };

// No generator calls from the sandbox namespace of any federation.
forbid (principal, action in [Esi::Action::"generate", Esi::Action::"revoke"], resource)
when { principal.namespace == "monitoring" && principal.name == "sandbox" };
"#;

#[test]
fn forbid_file_beats_permit_and_ids_are_reported() {
    let engine = build_ok(
        &[authorization("contract.yaml", CONTRACT_EXAMPLE)],
        &[file("/etc/esi/policies/guards.cedar", FORBID_PROD_ADMIN)],
    );
    assert_eq!(engine.policy_count(), 4 + 2);
    let prom = identity("client-cluster-alpha", ISSUER, "monitoring", "prom");
    let d = engine.decide(&prom, Action::Get, &key("vault-shared", "admin/root"));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            policy_ids: vec!["forbid-prod-admin".into()]
        }
    );
    assert!(!engine.reference_allows(&prom, Action::Get, &key("vault-shared", "admin/root")));
    assert!(allowed(
        &engine,
        &prom,
        Action::Get,
        &key("vault-shared", "app/x")
    ));

    let sandbox = identity("client-cluster-alpha", ISSUER, "monitoring", "sandbox");
    let vds = generator("default", "VaultDynamicSecret", "vault-app-creds-generator");
    let d = engine.decide(&sandbox, Action::Generate, &vds);
    // Without @id, the id is `<file stem>/<index in file>`.
    assert_eq!(d.policy_ids, ["guards/1"]);
    assert!(!d.allowed);
    assert!(allowed(&engine, &prom, Action::Generate, &vds));
}

#[test]
fn hand_written_permit_allows_and_reports_its_id() {
    let text = r#"
@id("ops-read-shared")
permit (principal in Esi::Namespace::"beta/ops", action == Esi::Action::"get", resource)
when { resource.store == "shared" };
"#;
    let engine = build_ok(&[], &[file("ops.cedar", text)]);
    let ops = identity("beta", ISSUER, "ops", "runner");
    let d = engine.decide(&ops, Action::Get, &key("shared", "k"));
    assert_eq!(d.policy_ids, ["ops-read-shared"]);
    assert!(d.allowed);
    // Namespace ids are per federation: the same namespace elsewhere does not match.
    let elsewhere = identity("gamma", ISSUER, "ops", "runner");
    assert!(!allowed(
        &engine,
        &elsewhere,
        Action::Get,
        &key("shared", "k")
    ));
}

#[test]
fn invalid_files_are_reported_with_their_path_and_excluded() {
    let good = file("/p/good.cedar", FORBID_PROD_ADMIN);
    let bad_attr = file(
        "/p/bad-attr.cedar",
        "permit (principal, action, resource)\nwhen { principal.nope == \"x\" };",
    );
    let bad_syntax = file(
        "/p/bad-syntax.cedar",
        "permit (principal, action, resource);\n\npermit (principal action);",
    );
    let bad_action = file(
        "/p/bad-action.cedar",
        "permit (principal, action == Esi::Action::\"delete\", resource);",
    );
    let template = file(
        "/p/template.cedar",
        "permit (principal == ?principal, action, resource);",
    );
    let auths = [authorization("contract.yaml", CONTRACT_EXAMPLE)];
    let (engine, errors) =
        PolicyEngine::build(&auths, &[bad_attr, good, bad_syntax, bad_action, template]);
    let engine = Tested::new(engine, &auths);
    let origins: Vec<&str> = errors.iter().map(|e| e.origin.as_str()).collect();
    assert_eq!(
        origins,
        [
            "/p/bad-attr.cedar",
            "/p/bad-syntax.cedar",
            "/p/bad-action.cedar",
            "/p/template.cedar"
        ]
    );
    assert!(errors.iter().all(|e| e.object == "policy file"));
    assert!(
        errors[0].reason.contains("does not validate"),
        "{}",
        errors[0]
    );
    assert!(errors[0].reason.contains("nope"), "{}", errors[0]);
    assert!(errors[1].reason.contains("does not parse"), "{}", errors[1]);
    assert!(errors[1].reason.contains("line 3:"), "{}", errors[1]);
    assert!(errors[3].reason.contains("templates"), "{}", errors[3]);
    // The valid first policy of bad-syntax.cedar did not sneak in: only the good file
    // and the Authorization are in force.
    assert_eq!(engine.policy_count(), 4 + 2);
    let anyone = identity("zeta", "https://x", "a", "b");
    assert!(!allowed(&engine, &anyone, Action::Get, &key("s", "k")));
}

#[test]
fn invalid_authorizations_are_reported_and_excluded() {
    let spiffe = authorization(
        "/m/spiffe.yaml",
        r#"
metadata: {name: spiffe}
spec:
  federationRef: {kind: KubernetesFederation, name: f}
  subject: {spiffe: {spiffeID: "spiffe://example.org/x"}}
  allowedClusterSecretStores: [s]
"#,
    );
    let good = authorization(
        "/m/good.yaml",
        r#"
metadata: {name: good}
spec:
  federationRef: {name: f}
  subject: {issuer: "https://i", subject: "system:serviceaccount:a:b"}
  allowedClusterSecretStores: [s]
"#,
    );
    let duplicate = AuthorizationSource {
        origin: "/m/dup.yaml".to_owned(),
        ..good.clone()
    };
    let auths = [spiffe, good, duplicate];
    let (engine, errors) = PolicyEngine::build(&auths, &[]);
    let engine = Tested::new(engine, &auths);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].object, "Authorization/spiffe");
    assert_eq!(errors[0].origin, "/m/spiffe.yaml");
    assert!(errors[0].reason.contains("spiffe"), "{}", errors[0]);
    assert_eq!(errors[1].origin, "/m/dup.yaml");
    assert!(errors[1].reason.contains("already used"), "{}", errors[1]);
    assert_eq!(engine.policy_count(), 1);
    let b = identity("f", "https://i", "a", "b");
    assert!(allowed(&engine, &b, Action::Get, &key("s", "k")));
}

#[test]
fn policy_file_ids_must_be_unique_and_not_reserved() {
    let a = file(
        "/p/a.cedar",
        "@id(\"x\") permit (principal, action, resource) when { false };",
    );
    let b = file(
        "/p/b.cedar",
        "@id(\"x\") forbid (principal, action, resource);",
    );
    let twice = file(
        "/p/twice.cedar",
        "@id(\"y\") permit (principal, action, resource) when { false };\n@id(\"y\") permit (principal, action, resource) when { false };",
    );
    let reserved = file(
        "/p/r.cedar",
        "@id(\"authorization/good/stores\") permit (principal, action, resource);",
    );
    let (engine, errors) = PolicyEngine::build(&[], &[a, b, twice, reserved]);
    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("/p/b.cedar") && reasons[0].contains("already used"));
    assert!(reasons[1].contains("twice"));
    assert!(reasons[2].contains("reserved"));
    // The forbid-everything file was rejected, so nothing but `a` is in force.
    assert_eq!(engine.policy_count(), 1);
}

/// An `@id` Cedar would print escaped (control, non-ASCII, quote, backslash, space) or
/// that spells the reserved prefix another way is refused with the file, so no policy can
/// be in force under an id that listings and audit lines spell differently (review of
/// issue 13: `@id("audit-note\u{200b}")` was enforced and missing from `policy compile`).
#[test]
fn policy_file_ids_are_plain_and_the_reserved_prefix_has_one_spelling() {
    for (n, id) in [
        "audit-note\u{200b}",
        "a\nb",
        "q\\\"x",
        "back\\\\slash",
        "two words",
        "\u{202e}evil",
        "Authorization/app/stores",
        "AUTHORIZATION/app/stores",
    ]
    .iter()
    .enumerate()
    {
        let f = file(
            &format!("/p/{n}.cedar"),
            &format!("@id(\"{id}\") permit (principal, action, resource);"),
        );
        let (engine, errors) = PolicyEngine::build(&[], &[f]);
        assert_eq!(errors.len(), 1, "{id}: {errors:?}");
        assert_eq!(engine.policy_count(), 0, "{id}");
    }
    let long = "x".repeat(257);
    let f = file(
        "/p/long.cedar",
        &format!("@id(\"{long}\") permit (principal, action, resource);"),
    );
    assert_eq!(PolicyEngine::build(&[], &[f]).1.len(), 1);
    let ok = file(
        "/p/ok.cedar",
        "@id(\"team-a:read/db_1.v2\") permit (principal, action, resource) when { false };",
    );
    let (engine, errors) = PolicyEngine::build(&[], &[ok]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(engine.policy_count(), 1);
    assert!(
        engine
            .listing()
            .iter()
            .any(|p| p.id == "team-a:read/db_1.v2")
    );
}

/// Values from manifests are data, never policy syntax.
#[test]
fn injection_attempts_do_not_widen_access() {
    let yaml = r#"
metadata: {name: "inject\" || true || \""}
spec:
  federationRef: {name: "f\" || true || \""}
  subject:
    oidc:
      issuer: "https://i\" || true || \""
      subject: "system:serviceaccount:a:b\" || principal.subject like \"*"
  allowedClusterSecretStores: ["x\" || true || \"", "q\\\"w\nz"]
  allowedGenerators:
    - {name: "g\" || true || \"", kind: "Fake", namespace: "n"}
  allowedGeneratorStates:
    - {namespace: "n\") || (true"}
  allowedRemoteKeys:
    "q\\\"w\nz": ["k*\\\" || true"]
"#;
    let source = authorization("/m/inject.yaml", yaml);
    let engine = build_ok(std::slice::from_ref(&source), &[]);
    assert_eq!(engine.policy_count(), 4);

    let spec = &source.spec;
    let oidc = spec
        .subject
        .as_ref()
        .and_then(|s| s.oidc.as_ref())
        .expect("oidc");
    let literal = Identity {
        federation: spec.federation_ref.name.clone(),
        issuer: oidc.issuer.clone(),
        subject: oidc.subject.clone(),
        ..identity("unused", "unused", "a", "b")
    };
    let plain = identity("f", "https://i", "a", "b");
    let other = identity("other", ISSUER, "x", "y");
    let odd_store = "q\\\"w\nz";
    for who in [&plain, &other] {
        assert!(!allowed(&engine, who, Action::Get, &key("x", "k")));
        assert!(!allowed(
            &engine,
            who,
            Action::Get,
            &key("x\" || true || \"", "k")
        ));
        assert!(!allowed(&engine, who, Action::Find, &store("anything")));
        assert!(!allowed(
            &engine,
            who,
            Action::Generate,
            &generator("n", "Fake", "g")
        ));
        assert!(!allowed(&engine, who, Action::RevokeStates, &states("n")));
    }
    // The literal (odd) values match themselves and nothing else.
    assert!(allowed(
        &engine,
        &literal,
        Action::Get,
        &key("x\" || true || \"", "k")
    ));
    assert!(!allowed(&engine, &literal, Action::Get, &key("x", "k")));
    assert!(!allowed(&engine, &literal, Action::Get, &key("other", "k")));
    assert!(allowed(
        &engine,
        &literal,
        Action::Generate,
        &generator("n", "Fake", "g\" || true || \"")
    ));
    assert!(!allowed(
        &engine,
        &literal,
        Action::Generate,
        &generator("n", "Fake", "g")
    ));
    assert!(allowed(
        &engine,
        &literal,
        Action::RevokeStates,
        &states("n\") || (true")
    ));
    assert!(!allowed(
        &engine,
        &literal,
        Action::RevokeStates,
        &states("n")
    ));
    // The key glob: `*` is the only wildcard; `\`, `"` and the rest are literal.
    assert!(allowed(
        &engine,
        &literal,
        Action::Get,
        &key(odd_store, "k-anything\\\" || true")
    ));
    assert!(!allowed(
        &engine,
        &literal,
        Action::Get,
        &key(odd_store, "k-anything")
    ));
    assert!(!allowed(
        &engine,
        &literal,
        Action::Get,
        &key(odd_store, "other")
    ));
    assert!(!allowed(&engine, &literal, Action::Find, &store(odd_store)));
}

#[test]
fn subject_glob_escapes_nothing_but_star() {
    let yaml = r#"
metadata: {name: g}
spec:
  federationRef: {name: f}
  subject: {issuer: "https://i", subject: "system:serviceaccount:team-\\*:*"}
  allowedClusterSecretStores: [s]
"#;
    let engine = build_ok(&[authorization("/m/g.yaml", yaml)], &[]);
    // The YAML value is `system:serviceaccount:team-\*:*`: `\` is a literal character,
    // not an escape, and both `*` are wildcards.
    let literal_backslash = identity("f", "https://i", "team-\\x", "sa");
    assert!(allowed(
        &engine,
        &literal_backslash,
        Action::Get,
        &key("s", "k")
    ));
    let no_backslash = identity("f", "https://i", "team-x", "sa");
    assert!(!allowed(
        &engine,
        &no_backslash,
        Action::Get,
        &key("s", "k")
    ));
}

/// A `forbid` that errors at evaluation denies, although Cedar would skip it.
#[test]
fn erroring_forbid_fails_closed() {
    // Arithmetic overflow passes strict validation but fails at evaluation.
    let overflow = r#"
@id("overflowing-guard")
forbid (principal, action == Esi::Action::"get", resource)
when { 9223372036854775807 + 1 > 0 };
"#;
    let engine = build_ok(
        &[authorization("contract.yaml", CONTRACT_EXAMPLE)],
        &[file("/p/overflow.cedar", overflow)],
    );
    let prom = identity("client-cluster-alpha", ISSUER, "monitoring", "prom");
    let d = engine.decide(&prom, Action::Get, &key("vault-shared", "k"));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            policy_ids: vec!["overflowing-guard".into()]
        }
    );
    // Plain Cedar skips the erroring forbid and would allow: that is the fail-open case.
    let (request, entities) = build_request(
        &DecisionKey::new(&prom, Action::Get, key("vault-shared", "k"), None),
        &RequestContext::now(None),
    )
    .expect("request");
    let raw = engine
        .authorizer
        .is_authorized(&request, &engine.flat, &entities);
    assert_eq!(raw.decision(), CedarDecision::Allow);
    // Other actions are untouched by that forbid.
    assert!(
        engine
            .decide(&prom, Action::Find, &store("vault-shared"))
            .allowed
    );
}

#[test]
fn decisions_are_counted() {
    let engine = PolicyEngine::empty();
    let who = identity("f", ISSUER, "ns", "sa");
    let counter = METRICS
        .decisions
        .with_label_values(&["revokeStates", "deny"]);
    let before = counter.get();
    engine.decide(&who, Action::RevokeStates, &states("ns"));
    assert!(counter.get() > before);
}

#[test]
fn example_policies_in_the_repository_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/examples");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("policies/examples exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "cedar") {
            let text = std::fs::read_to_string(&path).expect("readable");
            files.push(PolicyFile { path, text });
        }
    }
    assert!(!files.is_empty());
    let (engine, errors) = PolicyEngine::build(&[], &files);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(engine.policy_count() >= files.len());
}

// ---- sharded vs flat ----------------------------------------------------------------

const FEDERATIONS: [&str; 4] = ["alpha", "beta", "gamma", "unknown"];
const ISSUERS: [&str; 3] = [ISSUER, "https://oidc.beta", "https://evil"];
const NAMESPACES: [&str; 5] = ["default", "monitoring", "team-a", "team-b", "ops"];
const ACCOUNTS: [&str; 5] = ["app", "prometheus", "grafana", "sandbox", "ci"];
const STORES: [&str; 6] = ["vault-prod", "vault-dev", "aws", "gcp", "x\"y", "empty"];
const KEYS: [&str; 9] = [
    "db/creds",
    "db/",
    "api-keys/stripe",
    "admin/root",
    "app",
    "",
    "a*b",
    "db\\x",
    "db/creds/old",
];
const KINDS: [&str; 3] = ["Fake", "Password", "VaultDynamicSecret"];
const GENERATORS: [&str; 3] = ["gen-a", "gen-b", "creds"];
const KEY_GLOBS: [&str; 6] = ["db/*", "api-keys/*", "app", "*", "*/old", "a\\*b"];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or_default()
}

fn random_subject(rng: &mut StdRng) -> String {
    let ns = pick(rng, &NAMESPACES);
    let sa = pick(rng, &ACCOUNTS);
    match rng.random_range(0..10) {
        0 => format!("system:serviceaccount:{ns}:*"),
        1 => format!("system:serviceaccount:*:{sa}"),
        2 => "*".to_owned(),
        3 => format!("system:serviceaccount:{}*:{sa}", &ns[..2]),
        _ => format!("system:serviceaccount:{ns}:{sa}"),
    }
}

fn random_authorization(rng: &mut StdRng, i: usize) -> AuthorizationSource {
    let mut stores: Vec<String> = STORES
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .map(|s| (*s).to_owned())
        .collect();
    stores.dedup();
    let mut remote_keys = std::collections::BTreeMap::new();
    for s in &stores {
        if rng.random_bool(0.3) {
            let n = rng.random_range(1..3);
            let globs = (0..n).map(|_| pick(rng, &KEY_GLOBS).to_owned()).collect();
            remote_keys.insert(s.clone(), globs);
        }
    }
    let generators = (0..rng.random_range(0..3))
        .map(|_| AllowedGenerator {
            name: pick(rng, &GENERATORS).to_owned(),
            kind: pick(rng, &KINDS).to_owned(),
            namespace: pick(rng, &NAMESPACES).to_owned(),
            api_version: None,
        })
        .collect();
    let generator_states = (0..rng.random_range(0..2))
        .map(|_| AllowedGeneratorState {
            namespace: pick(rng, &NAMESPACES).to_owned(),
        })
        .collect();
    let subject = random_subject(rng);
    let issuer = pick(rng, &ISSUERS[..2]).to_owned();
    let subject = if rng.random_bool(0.5) {
        AuthorizationSubject {
            oidc: Some(OidcSubject { issuer, subject }),
            ..Default::default()
        }
    } else {
        AuthorizationSubject {
            issuer: Some(issuer),
            subject: Some(subject),
            ..Default::default()
        }
    };
    AuthorizationSource {
        name: format!("auth-{i}"),
        origin: format!("/corpus/auth-{i}.yaml"),
        spec: AuthorizationSpec {
            federation_ref: FederationRef {
                // Some of each kind, over the same federation names and subjects: the
                // sharding must keep kinds apart as Cedar does.
                kind: if rng.random_bool(0.25) {
                    "OIDCFederation"
                } else {
                    "KubernetesFederation"
                }
                .to_owned(),
                name: pick(rng, &FEDERATIONS[..3]).to_owned(),
            },
            subject: Some(subject),
            allowed_cluster_secret_stores: stores,
            allowed_generators: generators,
            allowed_generator_states: generator_states,
            allowed_remote_keys: remote_keys,
            when: None,
        },
    }
}

const CORPUS_FILES: [(&str, &str); 3] = [
    (
        "/corpus/forbids.cedar",
        r#"
forbid (principal, action == Esi::Action::"get", resource)
when { resource.key like "admin/*" };
forbid (principal in Esi::Namespace::"beta/team-b", action, resource is Esi::RemoteKey)
when { resource.store == "vault-prod" };
@id("no-sandbox-generators")
forbid (principal, action in [Esi::Action::"generate", Esi::Action::"revoke"], resource)
when { principal.name == "sandbox" };
forbid (principal in Esi::Federation::"gamma", action == Esi::Action::"find", resource);
"#,
    ),
    (
        "/corpus/permits.cedar",
        r#"
@id("ops-everything-in-dev")
permit (principal, action, resource in Esi::Store::"vault-dev")
when { principal.namespace == "ops" && principal.issuer == "https://kubernetes.default.svc.cluster.local" };
permit (principal, action == Esi::Action::"revokeStates", resource)
when { resource.namespace == principal.namespace && principal.name == "ci" };
"#,
    ),
    (
        "/corpus/fail-closed.cedar",
        r#"
@id("overflow-on-aws")
forbid (principal, action == Esi::Action::"get", resource)
when { resource.store == "aws" && 9223372036854775807 + 1 > 0 };
"#,
    ),
];

fn random_request(rng: &mut StdRng) -> (Identity, Action, Resource) {
    let mut who = identity(
        pick(rng, &FEDERATIONS),
        pick(rng, &ISSUERS),
        pick(rng, &NAMESPACES),
        pick(rng, &ACCOUNTS),
    );
    if rng.random_bool(0.05) {
        who.service_account_mut().unwrap().pod_name = Some("pod-1".to_owned());
    }
    if rng.random_bool(0.2) {
        // The same federation and subject text, as an OIDC subject with a claim.
        who = Identity::of_oidc_subject(
            &who.federation,
            &who.issuer,
            &who.subject,
            &[("repository", pick(rng, &NAMESPACES))],
        );
    }
    let action = *Action::ALL.choose(rng).unwrap_or(&Action::Get);
    let resource = match action {
        Action::Get => key(pick(rng, &STORES), pick(rng, &KEYS)),
        Action::Find => store(pick(rng, &STORES)),
        Action::Generate | Action::Revoke | Action::Renew => generator(
            pick(rng, &NAMESPACES),
            pick(rng, &KINDS),
            pick(rng, &GENERATORS),
        ),
        Action::RevokeStates => states(pick(rng, &NAMESPACES)),
    };
    (who, action, resource)
}

/// The sharding never changes a decision: sharded `decide` and one flat `PolicySet`
/// agree on every request of a randomized (fixed seed) corpus and on edge cases.
#[test]
fn sharded_decisions_equal_flat_evaluation() {
    let mut rng = StdRng::seed_from_u64(0x05EE_DE51);
    let auths: Vec<AuthorizationSource> = (0..150)
        .map(|i| random_authorization(&mut rng, i))
        .collect();
    let files: Vec<PolicyFile> = CORPUS_FILES.iter().map(|(p, t)| file(p, t)).collect();
    let engine = build_ok(&auths, &files);
    assert_eq!(engine.policy_count(), engine.flat.num_of_policies());
    assert!(engine.federations.len() >= 3);
    assert!(engine.federations.values().any(|s| {
        s.glob
            .as_ref()
            .is_some_and(|sets| sets.iter().any(|set| !set.is_empty()))
    }));

    let mut requests: Vec<(Identity, Action, Resource)> =
        (0..4000).map(|_| random_request(&mut rng)).collect();
    // Edge cases: the exact subjects of the corpus, through their own and other
    // federations; empty values; odd characters.
    for a in auths.iter().take(40) {
        let sub = a.spec.subject.as_ref().expect("subject");
        let (issuer, subject) = match &sub.oidc {
            Some(o) => (o.issuer.clone(), o.subject.clone()),
            None => (
                sub.issuer.clone().unwrap_or_default(),
                sub.subject.clone().unwrap_or_default(),
            ),
        };
        for fed in FEDERATIONS {
            let (ns, sa) = subject
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
                .unwrap_or(("", ""));
            let who = Identity {
                federation: fed.to_owned(),
                issuer: issuer.clone(),
                subject: subject.clone(),
                ..identity(fed, &issuer, ns, sa)
            };
            for s in &a.spec.allowed_cluster_secret_stores {
                for k in KEYS {
                    requests.push((who.clone(), Action::Get, key(s, k)));
                }
                requests.push((who.clone(), Action::Find, store(s)));
            }
            for g in &a.spec.allowed_generators {
                let r = generator(&g.namespace, &g.kind, &g.name);
                requests.push((who.clone(), Action::Generate, r.clone()));
                requests.push((who.clone(), Action::Revoke, r));
            }
        }
    }
    requests.push((identity("", "", "", ""), Action::Get, key("", "")));
    requests.push((identity("alpha", ISSUER, "", ""), Action::Find, store("")));

    let mut allows = 0;
    let mut denies = 0;
    for (who, action, what) in &requests {
        let sharded = engine.decide(who, *action, what);
        let flat = engine.reference_allows(who, *action, what);
        assert_eq!(
            sharded.allowed, flat,
            "disagreement on {action} {what} for {who:?}: {sharded:?}"
        );
        if sharded.allowed {
            allows += 1;
            assert!(!sharded.policy_ids.is_empty());
        } else {
            denies += 1;
        }
    }
    // The corpus must exercise both outcomes substantially, or the test proves little.
    assert!(
        allows > 300 && denies > 300,
        "allows {allows}, denies {denies}"
    );
}

/// A compiled shard outlives its engine: a rebuilt engine over the same Authorizations
/// uses the same compiled policies; a changed Authorization gets its own.
#[test]
fn compiled_shards_are_reused_across_engines_by_content() {
    let cache = PolicyCache::default();
    let auths = [authorization("contract.yaml", CONTRACT_EXAMPLE)];
    let checked = |a: &[AuthorizationSource]| -> Vec<Arc<CheckedAuthorization>> {
        a.iter()
            .map(|a| Arc::new(CheckedAuthorization::check(a).expect("checks")))
            .collect()
    };
    let shard_of = |engine: &PolicyEngine| {
        let fed = engine.federations.values().next().expect("one federation");
        match fed.exact.values().next() {
            Some(shard) => engine.cache.get(shard),
            None => fed.glob.clone().expect("a glob subject"),
        }
    };
    let (first, _) = PolicyEngine::build_checked(checked(&auths), &[], &cache);
    let (second, _) = PolicyEngine::build_checked(checked(&auths), &[], &cache);
    assert!(Arc::ptr_eq(&shard_of(&first), &shard_of(&second)));
    let mut changed = auths[0].clone();
    changed
        .spec
        .allowed_cluster_secret_stores
        .push("another".into());
    let (third, _) = PolicyEngine::build_checked(checked(&[changed]), &[], &cache);
    assert!(!Arc::ptr_eq(&shard_of(&first), &shard_of(&third)));
}

/// A cache too small to hold anything changes no decision: every shard is compiled again.
#[test]
fn a_cache_too_small_to_hold_a_shard_changes_no_decision() {
    let mut rng = StdRng::seed_from_u64(0x5EED_CAC4);
    let auths: Vec<AuthorizationSource> =
        (0..60).map(|i| random_authorization(&mut rng, i)).collect();
    let checked: Vec<Arc<CheckedAuthorization>> = {
        let mut names = HashSet::new();
        auths
            .iter()
            .filter(|a| names.insert(a.name.clone()))
            .filter_map(|a| CheckedAuthorization::check(a).ok())
            .map(Arc::new)
            .collect()
    };
    let files: Vec<PolicyFile> = CORPUS_FILES.iter().map(|(p, t)| file(p, t)).collect();
    let (tiny, errors) = PolicyEngine::build_checked(checked, &files, &PolicyCache::new(1));
    assert!(errors.is_empty(), "{errors:?}");
    let tiny = Tested::new(tiny, &auths);
    for _ in 0..1500 {
        let (who, action, what) = random_request(&mut rng);
        allowed(&tiny, &who, action, &what);
    }
}

/// What lets the engine skip validating compiled policies when it compiles them on a
/// request: every policy the compiler makes of a random corpus validates (strict mode).
#[test]
fn compiled_policies_of_random_authorizations_validate() {
    let mut rng = StdRng::seed_from_u64(0x7A11_DA7E);
    let validator = VALIDATOR.as_ref().expect("schema");
    let mut compiled = 0;
    for i in 0..400 {
        let a = random_authorization(&mut rng, i);
        let Ok(c) = compile::compile(&a.name, &canonical_spec(&a.spec)) else {
            continue;
        };
        let mut set = PolicySet::new();
        for (_, p) in c.policies {
            set.add(p).expect("unique ids");
            compiled += 1;
        }
        let result = validator.validate(&set, ValidationMode::Strict);
        let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        assert!(result.validation_passed(), "{}: {errors:?}", a.name);
    }
    assert!(
        compiled > 400,
        "the corpus compiled to {compiled} policies only"
    );
}

#[test]
fn decisions_are_cached_per_engine_on_every_input_of_the_request() {
    let text = r#"
@id("web-1-only")
permit (principal in Esi::Namespace::"beta/ops", action == Esi::Action::"get", resource)
when { principal has podName && principal.podName == "web-1" && resource.store == "shared" };
"#;
    let engine = build_ok(&[], &[file("pods.cedar", text)]);
    let mut web1 = identity("beta", ISSUER, "ops", "runner");
    web1.service_account_mut().unwrap().pod_name = Some("web-1".into());
    let mut web2 = web1.clone();
    web2.service_account_mut().unwrap().pod_name = Some("web-2".into());

    let first = engine.decide(&web1, Action::Get, &key("shared", "k"));
    assert!(first.allowed);
    assert_eq!(engine.evaluations(), 1);
    // The same request again: the cached decision, not a second evaluation.
    assert_eq!(
        engine.decide(&web1, Action::Get, &key("shared", "k")),
        first
    );
    assert_eq!(engine.evaluations(), 1);
    // One attribute apart (the Pod), another key, another action: each evaluated anew,
    // never answered with web-1's decision.
    assert!(
        !engine
            .decide(&web2, Action::Get, &key("shared", "k"))
            .allowed
    );
    assert!(
        !engine
            .decide(&web1, Action::Get, &key("other", "k"))
            .allowed
    );
    assert!(!engine.decide(&web1, Action::Find, &store("shared")).allowed);
    assert_eq!(engine.evaluations(), 4);
    let mut uid = web1.clone();
    uid.service_account_mut().unwrap().pod_uid = Some("another-pod-uid".into());
    assert!(
        engine
            .decide(&uid, Action::Get, &key("shared", "k"))
            .allowed
    );
    assert_eq!(engine.evaluations(), 5);

    // A forbid added means a new engine: its own (empty) cache, the forbid applies at once.
    let forbid = r#"
@id("no-web")
forbid (principal, action, resource) when { principal has podName && principal.podName like "web-*" };
"#;
    let guarded = build_ok(
        &[],
        &[file("pods.cedar", text), file("guard.cedar", forbid)],
    );
    let d = guarded.decide(&web1, Action::Get, &key("shared", "k"));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["no-web"]);
    // The first engine is unchanged by the second.
    assert!(
        engine
            .decide(&web1, Action::Get, &key("shared", "k"))
            .allowed
    );
}

#[test]
fn the_decision_cache_is_bounded_in_bytes_and_skips_large_keys() {
    let text = r#"
permit (principal in Esi::Namespace::"beta/ops", action == Esi::Action::"get", resource);
"#;
    let engine = build_ok(&[], &[file("all.cedar", text)]);
    let who = identity("beta", ISSUER, "ops", "runner");
    // Caller-chosen keys of 64 KiB: decided every time, never remembered.
    let big = "A".repeat(64 * 1024);
    for i in 0..300 {
        assert!(
            engine
                .decide(&who, Action::Get, &key("s", &format!("{i}{big}")))
                .allowed
        );
    }
    engine.decisions.run_pending_tasks();
    assert_eq!(engine.decisions.entry_count(), 0);
    assert_eq!(engine.evaluations(), 300);
    // Many small keys: the cache stays within its byte budget.
    for i in 0..40_000 {
        assert!(
            engine
                .decide(&who, Action::Get, &key("s", &format!("k{i}")))
                .allowed
        );
    }
    engine.decisions.run_pending_tasks();
    assert!(engine.decisions.weighted_size() <= DECISION_CACHE_BYTES);
    let kept: u64 = engine
        .decisions
        .iter()
        .map(|(k, d)| u64::from(k.weight(&d)))
        .sum();
    assert!(kept <= DECISION_CACHE_BYTES, "{kept}");
    assert!(engine.decisions.entry_count() > 1_000);
}

#[test]
fn a_decision_whose_policy_failed_to_evaluate_is_not_remembered() {
    // Overflow passes strict validation but fails at evaluation: the forbid counts as
    // satisfied (deny), with a warning for the audit log each time.
    let text = r#"
@id("erroring")
forbid (principal, action == Esi::Action::"get", resource)
when { 9223372036854775807 + 1 > 0 };
permit (principal in Esi::Namespace::"beta/ops", action == Esi::Action::"get", resource);
"#;
    let engine = build_ok(&[], &[file("e.cedar", text)]);
    let who = identity("beta", ISSUER, "ops", "runner");
    let before = engine.evaluations();
    for _ in 0..3 {
        let d = engine.decide(&who, Action::Get, &key("s", "k"));
        assert!(!d.allowed);
    }
    // Evaluated each time (not answered from the cache), so each logs its warning.
    assert_eq!(engine.evaluations() - before, 3);
}

/// For `policy lint`: the permit view names every permit a request satisfies, also when a
/// forbid denies it (which `decide` cannot show); the engine lists its Authorizations.
#[test]
fn permit_view_sees_permits_behind_forbids() {
    let app = authorization(
        "m.yaml#0",
        r#"
metadata: {name: app}
spec:
  federationRef: {kind: KubernetesFederation, name: alpha}
  subject: {oidc: {issuer: "https://kubernetes.default.svc.cluster.local", subject: "system:serviceaccount:apps:app"}}
  allowedClusterSecretStores: [vault]
"#,
    );
    let glob = authorization(
        "m.yaml#1",
        r#"
metadata: {name: all-apps}
spec:
  federationRef: {kind: KubernetesFederation, name: alpha}
  subject: {oidc: {issuer: "https://kubernetes.default.svc.cluster.local", subject: "system:serviceaccount:apps:*"}}
  allowedClusterSecretStores: [vault]
  allowedRemoteKeys: {vault: ["admin/*"]}
"#,
    );
    let files = [file(
        "p/f.cedar",
        "@id(\"no-admin\") forbid (principal, action, resource is Esi::RemoteKey) when { resource.key like \"admin/*\" };\n@id(\"ops\") permit (principal, action == Esi::Action::\"get\", resource) when { principal.namespace == \"apps\" };",
    )];
    let (engine, errors) = PolicyEngine::build(&[app, glob], &files);
    assert!(errors.is_empty(), "{errors:?}");
    let who = identity("alpha", ISSUER, "apps", "app");
    let view = engine.permit_view();
    let admin = key("vault", "admin/root");
    let d = engine.decide(&who, Action::Get, &admin);
    assert_eq!(
        (d.allowed, d.policy_ids.clone()),
        (false, vec!["no-admin".to_owned()])
    );
    assert_eq!(
        view.satisfied(&who, Action::Get, &admin),
        [
            "authorization/all-apps/remote-keys",
            "authorization/app/stores",
            "ops"
        ]
    );
    assert_eq!(
        view.satisfied(&who, Action::Find, &store("vault")),
        ["authorization/app/stores"]
    );
    // Another namespace satisfies nothing; a mismatched request builds nothing.
    let other = identity("alpha", ISSUER, "team", "x");
    assert!(view.satisfied(&other, Action::Get, &admin).is_empty());
    assert!(
        view.satisfied(&who, Action::Get, &store("vault"))
            .is_empty()
    );
    let listed = engine.authorizations();
    let names: Vec<&str> = listed.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["all-apps", "app"]);
    assert_eq!(
        listed[0].subject(),
        Some((ISSUER, "system:serviceaccount:apps:*"))
    );
}

const GH: &str = "https://token.actions.githubusercontent.com";

fn ci(subject: &str, claims: &[(&str, &str)]) -> Identity {
    Identity::of_oidc_subject("github", GH, subject, claims)
}

/// Issue 18: Authorizations of an OIDC federation grant its subjects (exact or glob) as
/// `Esi::OidcSubject`, never a ServiceAccount, and a KubernetesFederation's never an OIDC
/// subject, even with the same federation name and subject text.
#[test]
fn oidc_subjects_are_their_own_principal_type() {
    let auths = [
        authorization(
            "/m/ci.yaml",
            &format!(
                r#"
metadata: {{name: ci-main}}
spec:
  federationRef: {{kind: OIDCFederation, name: github}}
  subject: {{oidc: {{issuer: "{GH}", subject: "repo:org/app:ref:refs/heads/main"}}}}
  allowedClusterSecretStores: [ci]
"#
            ),
        ),
        authorization(
            "/m/ci-glob.yaml",
            &format!(
                r#"
metadata: {{name: ci-any-branch}}
spec:
  federationRef: {{kind: OktaFederation, name: github}}
  subject: {{oidc: {{issuer: "{GH}", subject: "repo:org/tools:*"}}}}
  allowedGenerators: [{{name: pw, kind: Password, namespace: ci}}]
"#
            ),
        ),
        authorization(
            "/m/sa.yaml",
            &format!(
                r#"
metadata: {{name: sa}}
spec:
  federationRef: {{kind: KubernetesFederation, name: github}}
  subject: {{oidc: {{issuer: "{GH}", subject: "system:serviceaccount:ci:runner"}}}}
  allowedClusterSecretStores: [k8s]
"#
            ),
        ),
    ];
    let engine = build_ok(&auths, &[]);
    let main = ci("repo:org/app:ref:refs/heads/main", &[]);
    assert!(allowed(&engine, &main, Action::Get, &key("ci", "token")));
    assert!(allowed(&engine, &main, Action::Find, &store("ci")));
    assert!(!allowed(&engine, &main, Action::Get, &key("k8s", "token")));
    let branch = ci("repo:org/app:ref:refs/heads/feature", &[]);
    assert!(!allowed(&engine, &branch, Action::Get, &key("ci", "token")));
    let tools = ci("repo:org/tools:ref:refs/heads/x", &[]);
    let pw = generator("ci", "Password", "pw");
    assert!(allowed(&engine, &tools, Action::Generate, &pw));
    assert!(!allowed(&engine, &main, Action::Generate, &pw));
    // The issuer is part of the subject.
    let other_issuer = Identity::of_oidc_subject(
        "github",
        "https://other.example",
        "repo:org/app:ref:refs/heads/main",
        &[],
    );
    assert!(!allowed(
        &engine,
        &other_issuer,
        Action::Get,
        &key("ci", "t")
    ));
    // The KubernetesFederation Authorization grants the ServiceAccount only.
    let sa = identity("github", GH, "ci", "runner");
    assert!(allowed(&engine, &sa, Action::Get, &key("k8s", "t")));
    assert!(!allowed(&engine, &sa, Action::Get, &key("ci", "t")));
    let sa_text = ci("system:serviceaccount:ci:runner", &[]);
    assert!(!allowed(&engine, &sa_text, Action::Get, &key("k8s", "t")));
    // The compiled policies name the principal type.
    let listed: Vec<String> = engine
        .listing()
        .iter()
        .map(|p| p.policy.to_string())
        .collect();
    assert!(
        listed
            .iter()
            .any(|p| p.contains("principal is Esi::OidcSubject in Esi::Federation::\"github\"")),
        "{listed:?}"
    );
}

/// Issue 18: hand-written policies tell kinds apart and read the claims a federation
/// hands to them; a `forbid` on a claim holds against an Authorization's permit.
#[test]
fn policies_read_oidc_claims_and_a_forbid_on_a_claim_holds() {
    let auth = authorization(
        "/m/ci.yaml",
        &format!(
            r#"
metadata: {{name: ci}}
spec:
  federationRef: {{kind: OIDCFederation, name: github}}
  subject: {{oidc: {{issuer: "{GH}", subject: "repo:*"}}}}
  allowedClusterSecretStores: [ci]
"#
        ),
    );
    let text = r#"
@id("no-forks")
forbid (principal is Esi::OidcSubject, action, resource)
when { principal.claims has repository && principal.claims.repository like "evil-org/*" };
@id("prod-only-from-main")
forbid (principal is Esi::OidcSubject, action, resource in Esi::Store::"ci")
when { resource has key && resource.key like "prod/*" }
unless { principal.claims has ref && principal.claims.ref == "refs/heads/main" };
@id("sa-namespace")
forbid (principal is Esi::ServiceAccount, action, resource)
when { principal.namespace == "sandbox" };
"#;
    let claims: BTreeSet<String> = ["repository".to_owned(), "ref".to_owned()].into();
    let (engine, errors) = PolicyEngine::build_checked_with_claims(
        vec![Arc::new(CheckedAuthorization::check(&auth).unwrap())],
        &[file("ci.cedar", text)],
        &PolicyCache::default(),
        &claims,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        engine.load_warnings().is_empty(),
        "{:?}",
        engine.load_warnings()
    );
    let engine = Tested::new(engine, std::slice::from_ref(&auth));
    let good = ci(
        "repo:org/app:ref:refs/heads/main",
        &[("repository", "org/app"), ("ref", "refs/heads/main")],
    );
    assert!(allowed(&engine, &good, Action::Get, &key("ci", "prod/db")));
    let fork = ci(
        "repo:evil-org/app:ref:refs/heads/main",
        &[("repository", "evil-org/app"), ("ref", "refs/heads/main")],
    );
    let d = engine.decide(&fork, Action::Get, &key("ci", "dev/x"));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["no-forks"]);
    let branch = ci(
        "repo:org/app:ref:refs/heads/x",
        &[("repository", "org/app"), ("ref", "refs/heads/x")],
    );
    assert!(!allowed(
        &engine,
        &branch,
        Action::Get,
        &key("ci", "prod/db")
    ));
    assert!(allowed(&engine, &branch, Action::Get, &key("ci", "dev/db")));
    // The decision cache tells claims apart: the same subject with other claims is
    // decided anew.
    let unclaimed = ci("repo:org/app:ref:refs/heads/main", &[]);
    assert!(!allowed(
        &engine,
        &unclaimed,
        Action::Get,
        &key("ci", "prod/db")
    ));
    assert!(allowed(&engine, &good, Action::Get, &key("ci", "prod/db")));
    // Without `has`, strict validation refuses a claim: it may be absent.
    let unguarded = r#"forbid (principal is Esi::OidcSubject, action, resource)
when { principal.claims.repository == "x" };"#;
    let (_, errors) = PolicyEngine::build_checked_with_claims(
        Vec::new(),
        &[file("bad.cedar", unguarded)],
        &PolicyCache::default(),
        &claims,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].reason.contains("optional attribute"),
        "{errors:?}"
    );
}

/// A policy file written before OIDC subjects existed (`principal.namespace` unguarded)
/// still loads, with a warning: dropping a forbid on upgrade would fail open. For an OIDC
/// subject its forbid denies (fails to evaluate), its permit does not apply.
#[test]
fn service_account_only_policies_load_with_a_warning_and_fail_closed_for_others() {
    let text = r#"
@id("ns-permit")
permit (principal, action, resource) when { principal.namespace == "ops" };
@id("ns-forbid")
forbid (principal, action, resource) when { principal.namespace == "sandbox" };
"#;
    let (engine, errors) = PolicyEngine::build(&[], &[file("old.cedar", text)]);
    assert!(errors.is_empty(), "{errors:?}");
    let warnings = engine.load_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].reason.contains("ServiceAccount callers only"),
        "{warnings:?}"
    );
    assert_eq!(warnings[0].origin, "old.cedar");
    let ops = identity("alpha", ISSUER, "ops", "app");
    assert!(engine.decide(&ops, Action::Get, &key("s", "k")).allowed);
    let sandbox = identity("alpha", ISSUER, "sandbox", "app");
    assert!(!engine.decide(&sandbox, Action::Get, &key("s", "k")).allowed);
    let d = engine.decide(&ci("repo:org/app", &[]), Action::Get, &key("s", "k"));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["ns-forbid"]);
    // A file invalid for every kind is still refused.
    let (_, errors) = PolicyEngine::build(
        &[],
        &[file(
            "bad.cedar",
            "permit (principal, action, resource) when { principal.nope == 1 };",
        )],
    );
    assert_eq!(errors.len(), 1);
}

/// A request context at `time` (seconds since the epoch) from `address`.
fn at(address: Option<&str>, time: i64) -> RequestContext {
    RequestContext {
        source_address: address.map(|a| a.parse().expect("test address")),
        time,
    }
}

/// 2026-06-01T00:00:00Z and 2027-06-01T00:00:00Z, in seconds since the epoch.
const JUNE_2026: i64 = 1_780_272_000;
const JUNE_2027: i64 = 1_811_808_000;

const FROM_LOOPBACK: &str = r#"
@id("loopback-reads-shared")
permit (principal, action == Esi::Action::"get", resource)
when { context has sourceAddress && context.sourceAddress.isInRange(ip("127.0.0.1/32")) };

@id("no-private-range")
forbid (principal, action, resource)
when { context has sourceAddress && context.sourceAddress.isInRange(ip("10.0.0.0/8")) };
"#;

#[test]
fn source_address_decides_each_request_through_the_cache() {
    let engine = build_ok(&[], &[file("net.cedar", FROM_LOOPBACK)]);
    let ops = identity("beta", ISSUER, "ops", "runner");
    let k = key("shared", "k");
    let decide = |ctx| engine.decide_in(&ops, Action::Get, &k, &ctx);
    let loopback = decide(at(Some("127.0.0.1"), JUNE_2026));
    assert!(loopback.allowed);
    assert_eq!(loopback.policy_ids, ["loopback-reads-shared"]);
    // The cached ALLOW for 127.0.0.1 is not reused for another address.
    let private = decide(at(Some("10.1.2.3"), JUNE_2026));
    assert!(!private.allowed);
    assert_eq!(private.policy_ids, ["no-private-range"]);
    assert!(!decide(at(Some("192.0.2.7"), JUNE_2026)).allowed);
    assert!(!decide(at(None, JUNE_2026)).allowed);
    assert!(!decide(at(Some("::1"), JUNE_2026)).allowed);
    assert_eq!(engine.evaluations(), 5);
    // The same request again is answered from the cache, still per address.
    assert!(decide(at(Some("127.0.0.1"), JUNE_2026)).allowed);
    assert!(!decide(at(Some("10.1.2.3"), JUNE_2026)).allowed);
    assert_eq!(engine.evaluations(), 5);
}

#[test]
fn time_decides_each_request_through_the_cache() {
    let text = r#"
@id("until-2027")
permit (principal, action == Esi::Action::"get", resource)
when { context.time < datetime("2027-01-01T00:00:00Z") };
"#;
    let engine = build_ok(&[], &[file("time.cedar", text)]);
    let ops = identity("beta", ISSUER, "ops", "runner");
    let k = key("shared", "k");
    assert!(
        engine
            .decide_in(&ops, Action::Get, &k, &at(None, JUNE_2026))
            .allowed
    );
    assert!(
        !engine
            .decide_in(&ops, Action::Get, &k, &at(None, JUNE_2027))
            .allowed
    );
    assert!(
        engine
            .decide_in(&ops, Action::Get, &k, &at(None, JUNE_2026))
            .allowed
    );
    // `decide` is "now": after 2026-12-31 this policy no longer allows.
    let now = RequestContext::now(None).time;
    let expected = now < 1_798_761_600;
    assert_eq!(engine.decide(&ops, Action::Get, &k).allowed, expected);
}

#[test]
fn pod_and_namespace_come_from_the_service_account() {
    let text = r#"
@id("runner-pods")
permit (principal, action == Esi::Action::"get", resource)
when { context has pod && context.pod like "runner-*" && context has namespace && context.namespace == "ops" };
"#;
    let engine = build_ok(&[], &[file("pod.cedar", text)]);
    let k = key("shared", "k");
    let mut pod = identity("beta", ISSUER, "ops", "runner");
    let no_pod = pod.clone();
    if let Some(sa) = pod.service_account_mut() {
        sa.pod_name = Some("runner-7f9c".to_owned());
    }
    let mut other_pod = pod.clone();
    if let Some(sa) = other_pod.service_account_mut() {
        sa.pod_name = Some("web-1".to_owned());
    }
    let ctx = at(None, JUNE_2026);
    assert!(engine.decide_in(&pod, Action::Get, &k, &ctx).allowed);
    assert!(!engine.decide_in(&no_pod, Action::Get, &k, &ctx).allowed);
    assert!(!engine.decide_in(&other_pod, Action::Get, &k, &ctx).allowed);
}

#[test]
fn context_stays_out_of_the_cache_key_when_no_policy_reads_it() {
    let text = r#"
@id("ops-read-shared")
permit (principal in Esi::Namespace::"beta/ops", action == Esi::Action::"get", resource)
when { resource.store == "shared" };
"#;
    let engine = build_ok(&[], &[file("ops.cedar", text)]);
    let ops = identity("beta", ISSUER, "ops", "runner");
    let k = key("shared", "k");
    for (address, time) in [("127.0.0.1", JUNE_2026), ("10.0.0.1", JUNE_2027)] {
        assert!(
            engine
                .decide_in(&ops, Action::Get, &k, &at(Some(address), time))
                .allowed
        );
    }
    assert_eq!(engine.evaluations(), 1);
}

#[test]
fn context_attributes_are_schema_validated() {
    for typo in [
        "context.sourceAdress.isInRange(ip(\"10.0.0.0/8\"))",
        "context.time < 5",
        "context.pod == \"x\"",
        "context.sourceAddress == \"10.0.0.1\"",
    ] {
        let text = format!(
            "@id(\"bad\")\npermit (principal, action == Esi::Action::\"get\", resource) when {{ {typo} }};\n"
        );
        let (engine, errors) = PolicyEngine::build(&[], &[file("bad.cedar", &text)]);
        assert_eq!(errors.len(), 1, "{typo}: {errors:?}");
        assert_eq!(engine.policy_count(), 0, "{typo}");
    }
}

#[test]
fn spec_when_adds_a_condition_and_refuses_bad_ones() {
    let auth = |name: &str, when: &str| {
        authorization(
            &format!("/etc/esi/{name}.yaml"),
            &format!(
                "metadata: {{name: {name}}}\nspec:\n  federationRef: {{name: beta}}\n  subject: {{oidc: {{issuer: \"{ISSUER}\", subject: \"system:serviceaccount:ops:runner\"}}}}\n  allowedClusterSecretStores: [shared]\n  when: {when:?}\n"
            ),
        )
    };
    let good = auth(
        "from-loopback",
        "context has sourceAddress && context.sourceAddress.isInRange(ip(\"127.0.0.1/32\"))",
    );
    let engine = build_ok(std::slice::from_ref(&good), &[]);
    let ops = identity("beta", ISSUER, "ops", "runner");
    let k = key("shared", "k");
    let d = engine.decide_in(&ops, Action::Get, &k, &at(Some("127.0.0.1"), JUNE_2026));
    assert!(d.allowed, "{d:?}");
    assert!(
        !engine
            .decide_in(&ops, Action::Get, &k, &at(Some("10.0.0.1"), JUNE_2026))
            .allowed
    );
    assert!(
        !engine
            .decide_in(&ops, Action::Get, &k, &at(None, JUNE_2026))
            .allowed
    );
    // ~700 nested parentheses overflowed the stack in Cedar's parser (review finding 6).
    let deep = format!("{}true{}", "(".repeat(700), ")".repeat(700));
    for bad in [
        deep.as_str(),
        // Injection: closing the brace to add a policy of its own.
        "true } ; permit (principal, action, resource) when { true",
        "true }; permit (principal, action, resource) when { true",
        // Schema: a typo, an unguarded optional attribute, a type error.
        "context.sourceAdress.isInRange(ip(\"10.0.0.0/8\"))",
        "context.sourceAddress.isInRange(ip(\"10.0.0.0/8\"))",
        "context.time == 3",
        "",
    ] {
        let (engine, errors) = PolicyEngine::build(&[auth("bad", bad)], &[]);
        assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
        assert_eq!(errors[0].object, "Authorization/bad", "{bad:?}");
        assert!(
            errors[0].reason.contains("spec.when"),
            "{bad:?}: {errors:?}"
        );
        // Refused: nothing granted, from anywhere.
        for from in [Some("127.0.0.1"), Some("10.0.0.1"), None] {
            assert!(
                !engine
                    .decide_in(&ops, Action::Get, &k, &at(from, JUNE_2026))
                    .allowed
            );
        }
    }
}

/// Review finding 6 (issue 13): a `.cedar` file of ~700 nested parentheses aborted the
/// process (stack overflow in Cedar's parser) in `serve` and `esi-server policy`. It is now
/// one load error naming the line, and the other files load.
#[test]
fn deeply_nested_policy_files_are_refused_not_a_crash() {
    let deep = file(
        "/p/deep.cedar",
        &format!(
            "// nesting\npermit (principal, action, resource)\nwhen {{ {}true{} }};",
            "(".repeat(700),
            ")".repeat(700)
        ),
    );
    let sets = file(
        "/p/sets.cedar",
        &format!(
            "permit (principal, action, resource) when {{ {}{} == [] }};",
            "[".repeat(700),
            "]".repeat(700)
        ),
    );
    let good = file(
        "/p/good.cedar",
        "forbid (principal, action, resource) when { false };",
    );
    let (engine, errors) = PolicyEngine::build(&[], &[deep, sets, good]);
    let origins: Vec<&str> = errors.iter().map(|e| e.origin.as_str()).collect();
    assert_eq!(origins, ["/p/deep.cedar", "/p/sets.cedar"]);
    assert!(
        errors[0]
            .reason
            .contains("nest more than 64 deep at line 3"),
        "{}",
        errors[0]
    );
    assert_eq!(engine.policy_count(), 1);
}
