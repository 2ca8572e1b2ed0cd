//! End to end, X.509-SVIDs (issue 18): the real `esi-server` over HTTPS with a
//! `SpiffeFederation` whose bundle holds an `x509-svid` authority (and a `jwt-svid` key);
//! clients present SVIDs the test mints (no SPIRE server here) as TLS client certificates.
//! A SPIFFE ID allowed and one denied; SVIDs of another trust domain, expired, with two URI
//! SANs, no URI SAN, a CA presented as leaf: refused (401, the rule named); an SVID and a
//! bearer token together refused; a plain client certificate beside a bearer token, and a
//! client without certificate, served as before; bundle rotation by a directory reload;
//! credentials issued over X.509 owned by the same workload as its JWT-SVIDs; an SVID caller
//! issuing on behalf of a workload (`x-workload-token`) of its own federation only.

mod common;

use common::fake_vault::FakeVault;
use common::svid::{SpiffeCa, Wire, client_presenting, client_with, plain_client_cert};
use common::*;
use serde_json::{Value, json};

const AUD: &str = "https://esi-federation.example.com";
const VALUE: &str = "x509-value-51ad";
const SECRET: &str = "/secretstore/mesh-store/secrets/db-password";
const API: &str = "spiffe://example.org/ns/prod/sa/api";

/// A `SpiffeFederation` `spire` (trust domain `example.org`): `ca` as its `x509-svid`
/// authority and the fixture key `ec-1` as its `jwt-svid` key.
fn federation(ca: &SpiffeCa) -> String {
    let mut jwt = jwk("ec-1");
    jwt["use"] = json!("jwt-svid");
    let bundle = json!({"spiffe_sequence": 1, "keys": [ca.bundle_entry(), jwt]});
    format!(
        r#"apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: spire}}
spec:
  trustDomain: example.org
  audiences: ["{AUD}"]
  bundle: '{bundle}'
"#
    )
}

fn authorization(name: &str, spiffe_id: &str, grants: &str) -> String {
    format!(
        r#"---
apiVersion: federation.external-secrets.io/v1alpha1
kind: Authorization
metadata: {{name: {name}}}
spec:
  federationRef: {{kind: SpiffeFederation, name: spire}}
  subject: {{spiffe: {{spiffeID: "{spiffe_id}"}}}}
{grants}"#
    )
}

fn jwt_svid(sub: &str) -> String {
    let now = now();
    mint(
        "ec-1",
        &json!({"sub": sub, "aud": [AUD], "iat": now, "exp": now + 300}),
        None,
    )
}

async fn post(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client.post(url).json(&json!({}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn x509_svids_are_authorized_refused_and_rotated() {
    let ca = SpiffeCa::new("example.org");
    let mut manifests = federation(&ca);
    manifests.push_str(&format!(
        r#"---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {{name: mesh-store}}
spec:
  provider:
    fake:
      data:
        - {{key: db-password, value: {VALUE}}}
"#
    ));
    manifests.push_str(&authorization(
        "api",
        API,
        "  allowedClusterSecretStores: [mesh-store]\n",
    ));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    let server_ca = server.ca_pem();
    let url = format!("{}{SECRET}", server.url);
    let ok = (200, format!("\"{VALUE}\""));
    let with = |svid: &common::svid::Svid| client_with(&server_ca, svid, false);

    // Allowed: the exact SPIFFE ID, over TLS 1.3 and TLS 1.2.
    let api = ca.svid(API);
    let api_client = with(&api);
    assert_eq!(post(&api_client, &url, None).await, ok);
    assert_eq!(
        post(&client_with(&server_ca, &api, true), &url, None).await,
        ok
    );
    // And over HTTP/2: every stream of the connection carries the chain.
    let h2 = client_presenting(&server_ca, &api, &api.key_pem, Wire::H2);
    assert_eq!(post(&h2, &url, None).await, ok);
    assert_eq!(post(&h2, &url, None).await, ok);
    // A certificate without its private key (certificates are public): the handshake fails,
    // on TLS 1.3 and 1.2 alike.
    let thief = ca.svid("spiffe://example.org/ns/prod/sa/thief");
    for wire in [Wire::Default, Wire::Tls12] {
        let stolen = client_presenting(&server_ca, &api, &thief.key_pem, wire);
        let sent = stolen.post(&url).json(&json!({})).send().await;
        assert!(sent.is_err(), "stolen certificate accepted: {sent:?}");
    }
    // Denied (404, as for anything the caller may not see): another workload.
    let other = ca.svid("spiffe://example.org/ns/prod/sa/other");
    assert_eq!(post(&with(&other), &url, None).await.0, 404);

    // Refused (401), the rule named in the answer.
    let expired = ca.svid_with(&[API], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let stranger = SpiffeCa::new("example.org").svid(API);
    let evil_ca = SpiffeCa::new("evil.org");
    for (what, svid, rule) in [
        (
            "another trust domain",
            ca.svid("spiffe://evil.org/ns/prod/sa/api"),
            "no SpiffeFederation for the X.509-SVID's trust domain",
        ),
        (
            "signed by another trust domain's CA",
            evil_ca.svid(API),
            "does not verify to its trust domain's bundle",
        ),
        (
            "signed by a CA not in the bundle",
            stranger,
            "does not verify to its trust domain's bundle",
        ),
        ("expired", expired, "X.509-SVID expired"),
        (
            "two URI SANs",
            ca.svid_with(&[API, "spiffe://example.org/ns/prod/sa/admin"], |_| {}),
            "more than one URI SAN",
        ),
        (
            "a CA presented as leaf",
            ca.ca_as_leaf(API),
            "leaf is a CA certificate",
        ),
        (
            "a malformed SPIFFE ID",
            ca.svid("spiffe://example.org/ns/prod/sa/../api"),
            "not a workload SPIFFE ID",
        ),
    ] {
        let (status, body) = post(&with(&svid), &url, None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(rule), "{what}: {body}");
        assert!(
            !body.contains("example.org"),
            "{what}: no certificate contents: {body}"
        );
    }
    // A certificate without URI SAN is no SVID: without a bearer token, nothing to go by.
    let plain = with(&plain_client_cert());
    let (status, body) = post(&plain, &url, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not an X.509-SVID"), "{body}");

    // Precedence: an SVID and a bearer token together are refused, even for the same ID;
    // a plain client certificate beside a bearer token, and no certificate at all, leave
    // the bearer token in charge.
    let (status, body) = post(&api_client, &url, Some(&jwt_svid(API))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("two credentials"), "{body}");
    assert_eq!(post(&plain, &url, Some(&jwt_svid(API))).await, ok);
    assert_eq!(post(&server.client, &url, Some(&jwt_svid(API))).await, ok);
    assert_eq!(post(&server.client, &url, None).await.0, 401);

    // Each refusal counted under its rule, as token refusals are.
    let (_, metrics) = server.get("/metrics").await;
    for outcome in [
        "x509_unknown_trust_domain",
        "x509_untrusted",
        "x509_expired",
        "x509_several_uri_sans",
        "x509_ca_leaf",
        "x509_bad_spiffe_id",
    ] {
        assert!(
            metrics.contains(&format!("esi_authn_total{{outcome=\"{outcome}\"}}")),
            "{outcome}"
        );
    }

    // The decision line names the workload as a JWT-SVID's would.
    server.sync_logs().await;
    let decisions: Vec<Value> = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "esi::decision")
        .collect();
    assert!(
        decisions.iter().any(|d| d["principal"] == API
            && d["principal_type"] == "SpiffeWorkload"
            && d["principal_id"] == format!("spire/{API}")
            && d["decision"] == "allow"),
        "{decisions:#?}"
    );

    // Bundle rotation: a reload replaces the CA. The old CA's SVID is refused at once, on
    // the connection that was served before (verification is per request), and the new
    // CA's accepted.
    let new_ca = SpiffeCa::new("example.org");
    let new_api = with(&new_ca.svid(API));
    assert_eq!(post(&new_api, &url, None).await.0, 401, "not yet trusted");
    server
        .write_manifest("all.yaml", &{
            let mut m = std::fs::read_to_string(server.manifests.join("all.yaml")).unwrap();
            m = m.replace(&federation(&ca), &federation(&new_ca));
            m
        })
        .await;
    let (status, body) = post(&api_client, &url, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");
    assert_eq!(post(&new_api, &url, None).await, ok);
}

/// Credentials issued over an X.509-SVID belong to the SPIFFE workload, whatever the SVID
/// kind: its JWT-SVID revokes them, another workload's does not.
#[tokio::test(flavor = "multi_thread")]
async fn x509_and_jwt_svids_of_one_workload_are_one_owner() {
    let vault = FakeVault::start().await;
    let ca = SpiffeCa::new("example.org");
    let mut manifests = federation(&ca);
    manifests.push_str(&vault.generator_manifests("ci"));
    manifests.push_str(&authorization(
        "mesh-ci",
        "spiffe://example.org/*",
        "  allowedGenerators:\n    - {name: creds, kind: VaultDynamicSecret, namespace: ci}\n",
    ));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    let id = "spiffe://example.org/shop/ns/ci/sa/u-sa-1/app/pod/u-pod-1/app-pod";
    let x509 = client_with(&server.ca_pem(), &ca.svid(id), false);
    let path = format!("{}/v1/generators/ci/VaultDynamicSecret/creds", server.url);
    let (status, body) = post(&x509, &path, None).await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let handle = format!(
        "{}/v1/credentials/{}",
        server.url,
        issued["credential"]["id"].as_str().unwrap()
    );
    let delete = |token: String| {
        let req = server.client.delete(&handle).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Another workload's JWT-SVID: not its credential.
    assert_eq!(
        delete(jwt_svid("spiffe://example.org/ns/ci/sa/other")).await,
        404
    );
    assert!(vault.revoked().is_empty());
    // The same workload's JWT-SVID: its own.
    assert_eq!(delete(jwt_svid(id)).await, 204);
    assert_eq!(vault.revoked().len(), 1);
}

/// A caller authenticated by its X.509-SVID issues on behalf of a workload (ESE's
/// `x-workload-token`): the workload's JWT-SVID of the caller's own `SpiffeFederation` makes
/// the workload the owner (its JWT-SVID revokes, the caller's SVID does not); a workload token
/// that does not verify, or one of another federation, is refused before anything is issued.
#[tokio::test(flavor = "multi_thread")]
async fn an_svid_caller_issues_on_behalf_of_a_workload_of_its_own_federation() {
    let vault = FakeVault::start().await;
    let ca = SpiffeCa::new("example.org");
    let mut manifests = federation(&ca);
    let mut partner_key = jwk("ec-2");
    partner_key["use"] = json!("jwt-svid");
    let partner_bundle = json!({"spiffe_sequence": 1, "keys": [partner_key]});
    manifests.push_str(&format!(
        r#"---
apiVersion: identity.federation.external-secrets.io/v1alpha1
kind: SpiffeFederation
metadata: {{name: partner}}
spec:
  trustDomain: partner.org
  audiences: ["{AUD}"]
  bundle: '{partner_bundle}'
"#
    ));
    manifests.push_str(&vault.generator_manifests("ci"));
    manifests.push_str(&authorization(
        "mesh-ci",
        "spiffe://example.org/*",
        "  allowedGenerators:\n    - {name: creds, kind: VaultDynamicSecret, namespace: ci}\n",
    ));
    let server = Server::start(&[("all.yaml", manifests)], &[]);
    let proxy = client_with(
        &server.ca_pem(),
        &ca.svid("spiffe://example.org/ns/esi/sa/proxy"),
        false,
    );
    let app = "spiffe://example.org/shop/ns/ci/sa/u-sa-1/app/pod/u-pod-1/app-pod";
    let path = format!("{}/v1/generators/ci/VaultDynamicSecret/creds", server.url);
    let on_behalf = |workload: String| {
        let req = proxy
            .post(&path)
            .header("x-workload-token", workload)
            .json(&json!({}));
        async move {
            let resp = req.send().await.expect("request");
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    // A workload token of another federation, and one that verifies nowhere: nothing issued.
    let partner = mint(
        "ec-2",
        &json!({"sub": "spiffe://partner.org/ns/ci/sa/app", "aud": [AUD], "iat": now(), "exp": now() + 300}),
        None,
    );
    let (status, body) = on_behalf(partner).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not from the caller's federation"), "{body}");
    let (status, body) = on_behalf(jwt_svid("spiffe://elsewhere.org/ns/ci/sa/app")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("x-workload-token"), "{body}");

    // The workload's own JWT-SVID: issued for it, owned by it.
    let (status, body) = on_behalf(jwt_svid(app)).await;
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let handle = format!(
        "{}/v1/credentials/{}",
        server.url,
        issued["credential"]["id"].as_str().unwrap()
    );
    // The caller's SVID does not own it.
    let status = proxy
        .delete(&handle)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);
    assert!(vault.revoked().is_empty());
    // The workload's JWT-SVID does.
    let status = server
        .client
        .delete(&handle)
        .bearer_auth(jwt_svid(app))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 204);
    assert_eq!(vault.revoked().len(), 1);
}
