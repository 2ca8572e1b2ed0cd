//! The Kubernetes ledger (`esi::ledger::KubernetesLedger`) against the fake API server of
//! `tests/common/fake_kube.rs`: each `kube::Client` is one replica (its own user, its own
//! watch-backed cache), so these tests race replicas the way a Deployment does.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_kube::{FakeKube, Fault};
use esi::authn::Identity;
use esi::generators::{GenerateContext, Generated, Generator, GeneratorError, RevocationState};
use esi::ledger::lifecycle::revoke_entries;
use esi::ledger::{GeneratorRef, Holder, KubernetesLedger, Ledger, LedgerEntry, Owner};
use esi::resources::GeneratorKey;

/// The server's namespace, where the ledger keeps its GeneratorStates.
const LEDGER_NS: &str = "esi-system";
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const STATES: &str = "generators.external-secrets.io/v1alpha1";
const IDENTITIES: &str = "federation.external-secrets.io/v1alpha1";

/// The fake with ESO's GeneratorState and ESE's AuthorizedIdentity served.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await;
    fake.register(
        "generators.external-secrets.io",
        "v1alpha1",
        "GeneratorState",
        "generatorstates",
        true,
        true,
    );
    fake.register(
        "federation.external-secrets.io",
        "v1alpha1",
        "AuthorizedIdentity",
        "authorizedidentities",
        false,
        true,
    );
    fake
}

/// One replica: its own user (so its requests can be told apart), client and ledger.
async fn replica(fake: &FakeKube, user: &str) -> KubernetesLedger {
    fake.add_user(user);
    KubernetesLedger::new(fake.client_as(user).await, LEDGER_NS)
        .await
        .unwrap()
}

fn identity(federation: &str, namespace: &str, sa: &str, pod: Option<&str>) -> Identity {
    let mut id = Identity::of_service_account(
        federation,
        "https://kubernetes.default.svc.cluster.local",
        namespace,
        sa,
    );
    if let Some(w) = id.service_account_mut() {
        w.uid = Some(format!("sa-uid-{sa}"));
        w.pod_name = pod.map(str::to_string);
        w.pod_uid = pod.map(|p| format!("uid-{p}"));
    }
    id
}

fn holder(namespace: &str, sa: &str, pod: Option<&str>) -> Holder {
    Holder::new(&identity("alpha", namespace, sa, pod), None)
}

fn entry(holder: &Holder, generator: (&str, &str, &str), expires_at: Option<u64>) -> LedgerEntry {
    let id = uuid::Uuid::new_v4().to_string();
    LedgerEntry {
        state: RevocationState(json!({ "leaseId": format!("lease/{id}") })),
        id,
        holder: holder.clone(),
        generator: GeneratorRef {
            namespace: generator.0.into(),
            kind: generator.1.into(),
            name: generator.2.into(),
        },
        issued_at: 1_700_000_000,
        expires_at,
        renewable: expires_at.is_some(),
        retry_at: None,
        claimed_until: None,
        attempts: 0,
        last_error: None,
    }
}

/// Polls `check` until it holds (the watch-backed parts are eventually consistent).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn due_ids(ledger: &KubernetesLedger, now: u64) -> Vec<String> {
    ledger
        .due(now, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn unix_now() -> u64 {
    common::now()
}

fn state_name(e: &LedgerEntry) -> String {
    format!("esi-{}", e.id)
}

#[tokio::test]
async fn records_finds_lists_due_and_removes() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let h = holder("apps", "app", Some("app-1"));
    let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
    ledger.record(&e).await.unwrap();
    // Written through to the API server when record returns.
    assert!(
        fake.get(STATES, "GeneratorState", Some(LEDGER_NS), &state_name(&e))
            .is_some()
    );
    assert_eq!(ledger.get(&e.id).await.unwrap(), Some(e.clone()));
    assert_eq!(ledger.by_owner(&h.owner()).await.unwrap(), vec![e.clone()]);
    assert_eq!(ledger.count().await.unwrap(), 1);
    assert_eq!(ledger.due(2_000, 10).await.unwrap(), vec![e.clone()]);
    assert!(ledger.due(1_999, 10).await.unwrap().is_empty());
    // Renewal and a failed revocation move the due time.
    assert!(ledger.renewed(&e.id, 5_000, false).await.unwrap());
    assert!(ledger.due(4_999, 10).await.unwrap().is_empty());
    let due = ledger.due(5_000, 10).await.unwrap();
    assert_eq!((due[0].expires_at, due[0].renewable), (Some(5_000), false));
    ledger.mark_retry(&e.id, 3_000, "down").await.unwrap();
    let got = ledger.get(&e.id).await.unwrap().unwrap();
    assert_eq!(
        (got.attempts, got.retry_at, got.last_error.as_deref()),
        (1, Some(3_000), Some("down"))
    );
    assert_eq!(ledger.due(3_000, 10).await.unwrap().len(), 1);
    // Gone: every read says so, a second removal reports false.
    assert!(ledger.remove(&e.id).await.unwrap());
    assert!(!ledger.remove(&e.id).await.unwrap());
    assert_eq!(ledger.get(&e.id).await.unwrap(), None);
    assert!(ledger.by_owner(&h.owner()).await.unwrap().is_empty());
    assert!(!ledger.renewed(&e.id, 9_000, true).await.unwrap());
    ledger.mark_retry(&e.id, 1, "gone").await.unwrap();
    assert_eq!(ledger.count().await.unwrap(), 0);
    assert!(ledger.due(u64::MAX, 10).await.unwrap().is_empty());
    assert!(
        fake.get(STATES, "GeneratorState", Some(LEDGER_NS), &state_name(&e))
            .is_none()
    );
}

#[tokio::test]
async fn owners_are_scoped_exactly() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let pod = holder("apps", "app", Some("app-pod"));
    let sa_named_like_pod = holder("apps", "app-pod", None);
    let other_ns = holder("other", "app", Some("app-pod"));
    let a = entry(&pod, ("apps", "VaultDynamicSecret", "db"), None);
    let b = entry(
        &sa_named_like_pod,
        ("apps", "VaultDynamicSecret", "db"),
        None,
    );
    let c = entry(&other_ns, ("other", "VaultDynamicSecret", "db"), None);
    // A ClusterGenerator's credential lives in the holder's namespace.
    let d = entry(&pod, ("apps", "ClusterGenerator", "shared"), None);
    for e in [&a, &b, &c, &d] {
        ledger.record(e).await.unwrap();
    }
    let sorted = |mut v: Vec<LedgerEntry>| {
        v.sort_by(|x, y| x.id.cmp(&y.id));
        v
    };
    assert_eq!(
        ledger.by_owner(&pod.owner()).await.unwrap(),
        sorted(vec![a.clone(), d.clone()])
    );
    assert_eq!(
        ledger.by_owner(&sa_named_like_pod.owner()).await.unwrap(),
        vec![b.clone()]
    );
    assert_eq!(
        ledger.by_owner(&other_ns.owner()).await.unwrap(),
        vec![c.clone()]
    );
    // ESE's plain owner name selects the pod and the ServiceAccount of that name.
    let both = Owner::from_ese("alpha".into(), "apps".into(), "app-pod");
    assert_eq!(ledger.by_owner(&both).await.unwrap(), sorted(vec![a, b, d]));
    let other_federation = Owner {
        federation: "beta".into(),
        ..pod.owner()
    };
    assert!(ledger.by_owner(&other_federation).await.unwrap().is_empty());
}

/// What `kubectl get generatorstate -o yaml` and `kubectl get authorizedidentity -o yaml`
/// show: ESO's and ESE's field names, the entry under `spec.state`, the expiry as the
/// garbage-collection deadline, and one `issuedCredentials` item per credential.
#[tokio::test]
async fn objects_have_the_eso_and_ese_shapes() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let pod = holder("apps", "app", Some("app-1"));
    let vault = entry(
        &pod,
        ("apps", "VaultDynamicSecret", "db"),
        Some(1_700_003_600),
    );
    let cluster_gen = entry(&pod, ("apps", "ClusterGenerator", "shared"), None);
    ledger.record(&vault).await.unwrap();
    ledger.record(&cluster_gen).await.unwrap();

    let state = fake
        .get(
            STATES,
            "GeneratorState",
            Some(LEDGER_NS),
            &state_name(&vault),
        )
        .unwrap();
    let labels = &state["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "esi-federation");
    let owner_label = labels["esi-federation/owner"].as_str().unwrap();
    assert_eq!(owner_label.len(), 40);
    assert!(owner_label.bytes().all(|c| c.is_ascii_hexdigit()));
    let identity_label = labels["esi-federation/identity"].as_str().unwrap();
    assert!(
        identity_label.starts_with("esi-sa-apps-app-") && identity_label.len() <= 63,
        "{identity_label}"
    );
    assert_eq!(
        state["spec"],
        json!({
            "resource": {
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": "VaultDynamicSecret",
                "metadata": {"name": "db", "namespace": "apps"},
            },
            "state": serde_json::to_value(&vault).unwrap(),
            "garbageCollectionDeadline": "2023-11-14T23:13:20Z",
        })
    );
    // The entry holds the revocation handle and who holds it, never a value.
    assert_eq!(
        state["spec"]["state"]["state"]["leaseId"],
        format!("lease/{}", vault.id)
    );
    let cluster_state = fake
        .get(
            STATES,
            "GeneratorState",
            Some(LEDGER_NS),
            &state_name(&cluster_gen),
        )
        .unwrap();
    assert_eq!(
        cluster_state["spec"]["resource"],
        json!({"apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "ClusterGenerator", "metadata": {"name": "shared"}})
    );
    assert!(
        cluster_state["spec"]
            .get("garbageCollectionDeadline")
            .is_none()
    );

    let identities = fake.list(IDENTITIES, "AuthorizedIdentity", None);
    assert_eq!(identities.len(), 1, "{identities:#?}");
    let id = &identities[0];
    assert_eq!(id["metadata"]["name"], identity_label);
    assert_eq!(
        id["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "esi-federation"
    );
    let credential = |e: &LedgerEntry, source: Value| {
        json!({
            "sourceRef": source,
            "stateRef": {
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": "GeneratorState",
                "name": state_name(e),
                "namespace": "apps",
            },
            "workloadBinding": {"kind": "Pod", "name": "app-1", "namespace": "apps", "uid": "uid-app-1"},
            "lastIssuedAt": "2023-11-14T22:13:20Z",
        })
    };
    let mut want = vec![
        credential(
            &vault,
            json!({"apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "VaultDynamicSecret", "name": "db", "namespace": "apps"}),
        ),
        credential(
            &cluster_gen,
            json!({"apiVersion": "generators.external-secrets.io/v1alpha1", "kind": "ClusterGenerator", "name": "shared"}),
        ),
    ];
    let by_state = |v: &Value| v["stateRef"]["name"].as_str().unwrap().to_string();
    want.sort_by_key(by_state);
    let mut have = id["spec"]["issuedCredentials"].as_array().unwrap().clone();
    have.sort_by_key(by_state);
    assert_eq!(have, want);
    assert_eq!(
        id["spec"]["identitySpec"],
        json!({
            "federationRef": {"kind": "KubernetesFederation", "name": "alpha"},
            "subject": {"oidc": {
                "issuer": "https://kubernetes.default.svc.cluster.local",
                "subject": "system:serviceaccount:apps:app",
            }},
        })
    );

    // A ServiceAccount-bound credential of the same holder identity: bound to the SA.
    let sa = holder("apps", "app", None);
    let by_sa = entry(&sa, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&by_sa).await.unwrap();
    let id = fake
        .get(IDENTITIES, "AuthorizedIdentity", None, identity_label)
        .unwrap();
    let items = id["spec"]["issuedCredentials"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().any(|i| i["workloadBinding"]
        == json!({"kind": "ServiceAccount", "name": "app", "namespace": "apps", "uid": "sa-uid-app"})));

    // Removal takes the credential off its identity.
    assert!(ledger.remove(&vault.id).await.unwrap());
    let id = fake
        .get(IDENTITIES, "AuthorizedIdentity", None, identity_label)
        .unwrap();
    let names: Vec<String> = id["spec"]["issuedCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(by_state)
        .collect();
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&state_name(&vault)));
}

/// Two replicas race `claim` on each of 20 entries at once: exactly one wins each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claim_each_entry_exactly_once() {
    let fake = cluster().await;
    let a = Arc::new(replica(&fake, "replica-a").await);
    let b = Arc::new(replica(&fake, "replica-b").await);
    let h = holder("apps", "app", Some("app-1"));
    let mut entries = Vec::new();
    for _ in 0..20 {
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(1));
        a.record(&e).await.unwrap();
        entries.push(e);
    }
    for round in 0..3u64 {
        let now = 100 + round * 1_000;
        let mut races = Vec::new();
        for e in &entries {
            let (a, b, id) = (a.clone(), b.clone(), e.id.clone());
            races.push(tokio::spawn(async move {
                let (x, y) = tokio::join!(
                    a.claim(&id, now, now + 60, true),
                    b.claim(&id, now, now + 60, true)
                );
                (x.unwrap(), y.unwrap())
            }));
        }
        for (race, e) in races.into_iter().zip(&entries) {
            let (x, y) = race.await.unwrap();
            assert!(
                x.is_some() != y.is_some(),
                "round {round}: entry {} claimed by {} replicas",
                e.id,
                usize::from(x.is_some()) + usize::from(y.is_some())
            );
            let won = x.or(y).unwrap();
            assert_eq!(won.claimed_until, Some(now + 60));
        }
    }
    // The races were real: some replica's write met the other's and lost with 409.
    let conflicts = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.status == 409)
        .count();
    assert!(
        conflicts > 0,
        "no write conflicted: the race was not exercised"
    );
}

/// The rules every ledger keeps (`test_support::claims_are_exclusive` in
/// src/ledger/mod.rs), here across two replicas; `due` reads the cache, so it is awaited.
#[tokio::test]
async fn the_claim_rules_hold_across_replicas() {
    let fake = cluster().await;
    let a = replica(&fake, "replica-a").await;
    let b = replica(&fake, "replica-b").await;
    let now = 10_000;
    let holder = holder("n", "s", Some("p"));
    let due = entry(&holder, ("n", "VaultDynamicSecret", "db"), Some(now - 1));
    a.record(&due).await.unwrap();
    let (x, y) = tokio::join!(
        a.claim(&due.id, now, now + 60, true),
        b.claim(&due.id, now, now + 60, true)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.is_some() != y.is_some(), "exactly one claim wins");
    assert!(
        b.claim(&due.id, now + 1, now + 61, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !b.renewed(&due.id, now + 3_600, true).await.unwrap(),
        "a credential being revoked is not renewed"
    );
    assert!(
        !a.renewed(&due.id, now + 3_600, true).await.unwrap(),
        "a credential being revoked is not renewed"
    );
    // Its holder died: the claim lapses and the entry is due again (on both replicas).
    for ledger in [&a, &b] {
        eventually("the claim reaches both caches", || async {
            ledger
                .due(now + 61, 10)
                .await
                .unwrap()
                .iter()
                .any(|e| e.id == due.id && e.claimed_until == Some(now + 60))
        })
        .await;
        assert!(due_ids(ledger, now + 59).await.is_empty());
    }
    assert!(
        b.claim(&due.id, now + 61, now + 120, true)
            .await
            .unwrap()
            .is_some()
    );
    // A failed revocation: retried later by the sweeper, but an owner may ask now.
    b.mark_retry(&due.id, now + 500, "backend down")
        .await
        .unwrap();
    assert!(
        a.claim(&due.id, now + 62, now + 120, true)
            .await
            .unwrap()
            .is_none()
    );
    let taken = a.claim(&due.id, now + 62, now + 120, false).await.unwrap();
    assert_eq!(taken.map(|e| e.attempts), Some(1));

    // Read as due by a sweep on one replica, renewed through the other: the sweep's
    // claim finds it not due.
    let renewed = entry(&holder, ("n", "VaultDynamicSecret", "db"), Some(now - 1));
    b.record(&renewed).await.unwrap();
    eventually(
        "the new entry reaches the sweeping replica's cache",
        || async { due_ids(&a, now).await.contains(&renewed.id) },
    )
    .await;
    let sweep_read = a.due(now, 10).await.unwrap();
    assert!(sweep_read.iter().any(|e| e.id == renewed.id));
    assert!(b.renewed(&renewed.id, now + 3_600, true).await.unwrap());
    assert!(
        a.claim(&renewed.id, now, now + 60, true)
            .await
            .unwrap()
            .is_none(),
        "the sweep revoked what was renewed after it looked"
    );
    assert!(
        a.claim(&renewed.id, now, now + 60, false)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        a.claim("no-such-id", now, now + 60, false)
            .await
            .unwrap()
            .is_none()
    );
}

/// A stale cache (its watch is down) never decides a claim: the API server's object does.
#[tokio::test]
async fn claims_decide_on_the_api_server_never_on_a_stale_cache() {
    let fake = cluster().await;
    let a = replica(&fake, "replica-a").await;
    let b = replica(&fake, "replica-b").await;
    let h = holder("apps", "app", None);
    let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(50));
    a.record(&e).await.unwrap();
    eventually("b sees the entry", || async {
        due_ids(&b, 100).await.contains(&e.id)
    })
    .await;
    // b's watch (and every watch) is cut and cannot come back.
    fake.set_fault(Fault::RefuseWatches);
    fake.drop_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renewed_until = 5_000;
    assert!(a.renewed(&e.id, renewed_until, true).await.unwrap());
    // b's cache still says due; b's claim reads the renewal and leaves it.
    assert!(
        due_ids(&b, 100).await.contains(&e.id),
        "b's cache was not stale"
    );
    assert!(b.claim(&e.id, 100, 160, true).await.unwrap().is_none());
    // And a claim by a is seen by b's renewal, whatever b's cache says.
    assert!(a.claim(&e.id, 100, 160, false).await.unwrap().is_some());
    assert!(!b.renewed(&e.id, 9_000, true).await.unwrap());
    // b reads the current entry through the API meanwhile.
    assert_eq!(
        b.get(&e.id).await.unwrap().map(|e| e.claimed_until),
        Some(Some(160))
    );
    // The watch comes back and the cache catches up.
    fake.set_fault(Fault::None);
    eventually("b's cache catches up after the watch returns", || async {
        b.due(100, 10).await.unwrap().is_empty()
            && b.due(160, 10)
                .await
                .unwrap()
                .iter()
                .any(|x| x.id == e.id && x.claimed_until == Some(160))
    })
    .await;
}

/// A credential recorded through one replica is found at once by another (a `DELETE` may
/// reach another replica than the `POST`), and the other's cache catches up.
#[tokio::test]
async fn another_replica_sees_writes_at_once_and_its_cache_catches_up() {
    let fake = cluster().await;
    let a = replica(&fake, "replica-a").await;
    let b = replica(&fake, "replica-b").await;
    let h = holder("apps", "app", Some("app-1"));
    let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
    // b's cache cannot hear of the record: get and by_owner must read the API server.
    fake.set_fault(Fault::RefuseWatches);
    fake.drop_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.record(&e).await.unwrap();
    assert!(
        b.due(2_000, 10).await.unwrap().is_empty(),
        "b's cache was not stale"
    );
    assert_eq!(b.by_owner(&h.owner()).await.unwrap(), vec![e.clone()]);
    assert_eq!(b.get(&e.id).await.unwrap(), Some(e.clone()));
    fake.set_fault(Fault::None);
    eventually("b's cache sees a's record", || async {
        b.count().await.unwrap() == 1 && due_ids(&b, 2_000).await == vec![e.id.clone()]
    })
    .await;
    assert!(b.renewed(&e.id, 3_000, true).await.unwrap());
    eventually("a's cache sees b's renewal", || async {
        due_ids(&a, 2_999).await.is_empty() && due_ids(&a, 3_000).await == vec![e.id.clone()]
    })
    .await;
    // Removed through b: a reports it gone at once, and its cache follows.
    assert!(b.remove(&e.id).await.unwrap());
    assert!(!a.remove(&e.id).await.unwrap());
    assert_eq!(a.get(&e.id).await.unwrap(), None);
    eventually("a's cache sees b's removal", || async {
        a.count().await.unwrap() == 0 && a.due(u64::MAX, 10).await.unwrap().is_empty()
    })
    .await;
    // A re-list (the watch history is gone) keeps the cache right.
    let f = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
    b.record(&f).await.unwrap();
    fake.compact();
    fake.drop_watches();
    let g = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(2_000));
    b.record(&g).await.unwrap();
    eventually("a's cache after a re-list", || async {
        let mut ids = due_ids(&a, 2_000).await;
        ids.sort();
        let mut want = vec![f.id.clone(), g.id.clone()];
        want.sort();
        ids == want
    })
    .await;
}

/// Revocations racing on two replicas (a `DELETE` on each, or concurrent `remove`s): one
/// removal reports true.
#[tokio::test]
async fn one_of_two_racing_removals_wins() {
    let fake = cluster().await;
    let a = replica(&fake, "replica-a").await;
    let b = replica(&fake, "replica-b").await;
    let h = holder("apps", "app", None);
    for _ in 0..10 {
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
        a.record(&e).await.unwrap();
        let (x, y) = tokio::join!(a.remove(&e.id), b.remove(&e.id));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(
            x != y,
            "both or neither removal reported the entry: {x} {y}"
        );
    }
}

/// A revocable generator counting each revocation, slow enough for races to overlap.
struct Counting {
    revoked: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Generator for Counting {
    fn kind(&self) -> &'static str {
        "VaultDynamicSecret"
    }
    async fn generate(&self, _: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        Err(GeneratorError::Impossible("not used".into()))
    }
    async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let lease = state.0["leaseId"].as_str().unwrap_or_default().to_string();
        self.revoked.lock().unwrap().push(lease);
        Ok(())
    }
}

/// Two replicas' sweeps read the same due entries before either revokes: each credential
/// is revoked at its backend exactly once, and every entry is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sweeps_on_two_replicas_revoke_each_credential_once() {
    let fake = cluster().await;
    let a = replica(&fake, "replica-a").await;
    let b = replica(&fake, "replica-b").await;
    let h = holder("apps", "app", Some("app-1"));
    let now = unix_now();
    let mut want = Vec::new();
    for i in 0..12 {
        let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(now - 1));
        // Half recorded through each replica.
        if i % 2 == 0 { &a } else { &b }.record(&e).await.unwrap();
        want.push(e.id);
    }
    want.sort();
    for ledger in [&a, &b] {
        eventually("both caches see every entry", || async {
            let mut ids = due_ids(ledger, unix_now()).await;
            ids.sort();
            ids == want
        })
        .await;
    }
    let first = a.due(unix_now(), 100).await.unwrap();
    let second = b.due(unix_now(), 100).await.unwrap();
    let counting = Arc::new(Counting {
        revoked: Mutex::new(Vec::new()),
    });
    let key: GeneratorKey = first[0].generator.lookup_key();
    let generators: HashMap<GeneratorKey, Arc<dyn Generator>> =
        [(key, counting.clone() as Arc<dyn Generator>)].into();
    let (x, y) = tokio::join!(
        revoke_entries(&a, &generators, first, "sweep", Duration::from_secs(5)),
        revoke_entries(&b, &generators, second, "sweep", Duration::from_secs(5))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.revoked + y.revoked, 12, "{x:?} {y:?}");
    assert_eq!(x.taken + y.taken, 12, "{x:?} {y:?}");
    let mut per_lease: BTreeMap<String, usize> = BTreeMap::new();
    for lease in counting.revoked.lock().unwrap().iter() {
        *per_lease.entry(lease.clone()).or_default() += 1;
    }
    assert_eq!(per_lease.len(), 12, "{per_lease:?}");
    assert!(per_lease.values().all(|n| *n == 1), "{per_lease:?}");
    for ledger in [&a, &b] {
        eventually("every entry is gone from both caches", || async {
            ledger.count().await.unwrap() == 0
        })
        .await;
    }
    assert!(fake.list(STATES, "GeneratorState", None).is_empty());
}

/// The AuthorizedIdentity is derived: a lost or damaged one is rebuilt by the next write of
/// its holder, and failing to write it never fails (or undoes) a record.
#[tokio::test]
async fn the_authorized_identity_is_repaired_by_the_next_write() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let h = holder("apps", "app", None);
    let e1 = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&e1).await.unwrap();
    let name = fake.list(IDENTITIES, "AuthorizedIdentity", None)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = |fake: &FakeKube| -> Vec<String> {
        let id = fake
            .get(IDENTITIES, "AuthorizedIdentity", None, &name)
            .unwrap();
        let mut v: Vec<String> = id["spec"]["issuedCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["stateRef"]["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    // Damaged (someone emptied it, keeping an item of another writer): repaired.
    let mut damaged = fake
        .get(IDENTITIES, "AuthorizedIdentity", None, &name)
        .unwrap();
    let foreign = json!({"sourceRef": {"apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore", "name": "vault"}});
    damaged["spec"]["issuedCredentials"] = json!([foreign.clone()]);
    fake.apply(damaged);
    let e2 = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&e2).await.unwrap();
    let mut want = vec![state_name(&e1), state_name(&e2)];
    want.sort();
    let id = fake
        .get(IDENTITIES, "AuthorizedIdentity", None, &name)
        .unwrap();
    let items = id["spec"]["issuedCredentials"].as_array().unwrap();
    assert!(
        items.contains(&foreign),
        "another writer's item was dropped"
    );
    let mut ours: Vec<String> = items
        .iter()
        .filter_map(|i| i["stateRef"]["name"].as_str().map(str::to_string))
        .collect();
    ours.sort();
    assert_eq!(ours, want);
    // Deleted: re-created with every credential.
    assert!(fake.delete(IDENTITIES, "AuthorizedIdentity", None, &name));
    let e3 = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&e3).await.unwrap();
    let mut want3 = vec![state_name(&e1), state_name(&e2), state_name(&e3)];
    want3.sort();
    assert_eq!(listed(&fake), want3);
    assert_eq!(ledger.by_owner(&h.owner()).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_failed_identity_write_never_fails_the_record() {
    // ESE's AuthorizedIdentity CRD is missing: every write of it fails.
    let fake = FakeKube::start().await;
    fake.register(
        "generators.external-secrets.io",
        "v1alpha1",
        "GeneratorState",
        "generatorstates",
        true,
        true,
    );
    let ledger = replica(&fake, "a").await;
    let h = holder("apps", "app", None);
    let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&e).await.unwrap();
    assert_eq!(ledger.get(&e.id).await.unwrap(), Some(e.clone()));
    assert!(ledger.remove(&e.id).await.unwrap());
    assert_eq!(
        fake.list(STATES, "GeneratorState", None).len(),
        0,
        "the GeneratorState was kept or duplicated"
    );
}

#[tokio::test]
async fn inputs_are_bounded_and_errors_hold_no_values() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let h = holder("apps", "app", None);
    // Handles that cannot name an object were never recorded.
    for bad in ["", "../x", "ESI", "a/b", "-a", &"a".repeat(65), "a\u{0}b"] {
        assert_eq!(ledger.get(bad).await.unwrap(), None, "{bad:?}");
        assert!(ledger.claim(bad, 1, 2, false).await.unwrap().is_none());
        assert!(!ledger.remove(bad).await.unwrap());
        assert!(!ledger.renewed(bad, 5, true).await.unwrap());
    }
    let mut e = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    e.id = "Has Spaces".into();
    assert!(ledger.record(&e).await.is_err());
    // An API failure: the status, never the object or the lease.
    let ok = entry(&h, ("apps", "VaultDynamicSecret", "db"), None);
    ledger.record(&ok).await.unwrap();
    let conflict = ledger.record(&ok).await.unwrap_err().to_string();
    assert!(conflict.contains("409"), "{conflict}");
    fake.set_fault(Fault::RefuseReads);
    let refused = ledger.by_owner(&h.owner()).await.unwrap_err().to_string();
    fake.set_fault(Fault::None);
    assert!(refused.contains("500"), "{refused}");
    let lease = ok.state.0["leaseId"].as_str().unwrap();
    for err in [conflict, refused] {
        assert!(!err.contains(lease) && !err.contains("leaseId"), "{err}");
        assert!(err.len() < 200, "{err}");
    }
}

#[tokio::test]
async fn start_up_fails_clearly_without_the_crd() {
    let fake = FakeKube::start().await;
    let started = Instant::now();
    let err = KubernetesLedger::new(fake.client().await, LEDGER_NS)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("GeneratorState CRD"), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// An object being deleted (a finalizer, e.g. ESO's own GeneratorState controller, holds it)
/// counts as removed: not found, not owned, not due, not claimable.
#[tokio::test]
async fn an_object_being_deleted_counts_as_removed() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let h = holder("apps", "app", None);
    let e = entry(&h, ("apps", "VaultDynamicSecret", "db"), Some(10));
    ledger.record(&e).await.unwrap();
    let mut obj = fake
        .get(STATES, "GeneratorState", Some(LEDGER_NS), &state_name(&e))
        .unwrap();
    obj["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    obj["metadata"]["finalizers"] = json!(["generatorstate.externalsecrets.io/finalizer"]);
    fake.apply(obj);
    assert_eq!(ledger.get(&e.id).await.unwrap(), None);
    assert!(ledger.by_owner(&h.owner()).await.unwrap().is_empty());
    assert!(
        ledger
            .claim(&e.id, 100, 200, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!ledger.remove(&e.id).await.unwrap());
    eventually("the cache drops it", || async {
        ledger.count().await.unwrap() == 0 && due_ids(&ledger, 100).await.is_empty()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Review (wip/review): GeneratorStates are writable by namespace editors (ESO's
// `external-secrets-edit` ClusterRole aggregates create/update/delete on `generatorstates`
// into `edit` and `admin`). The ledger must not act on an object it did not write.
// ---------------------------------------------------------------------------------------

/// What a namespace editor of `ns` can create with ESO's standard RBAC: a GeneratorState
/// carrying our label and an entry of its choosing.
fn forged_state(ns: &str, forged: &LedgerEntry) -> Value {
    json!({
        "apiVersion": STATES,
        "kind": "GeneratorState",
        "metadata": {
            "name": state_name(forged),
            "namespace": ns,
            "labels": {"app.kubernetes.io/managed-by": "esi-federation"},
        },
        "spec": {"state": serde_json::to_value(forged).unwrap()},
    })
}

/// A tenant of namespace `evil` forges an entry naming another namespace's generator and a
/// lease of its choosing: the sweeper must not call that generator's backend with it.
#[tokio::test]
async fn review_a_forged_generator_state_never_drives_another_namespaces_generator() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let attacker = holder("evil", "attacker", None);
    let mut forged = entry(&attacker, ("victim", "VaultDynamicSecret", "db"), Some(1));
    forged.state = RevocationState(json!({"leaseId": "database/creds/victim/the-victims-lease"}));
    fake.apply(forged_state("evil", &forged));
    // A genuine entry recorded after the forgery: once the cache has it, the watch has
    // seen everything before it, and the forgery (another namespace) is not there.
    let genuine = entry(
        &holder("apps", "app", None),
        ("apps", "Password", "pw"),
        Some(1),
    );
    ledger.record(&genuine).await.unwrap();
    eventually("the genuine entry reaches the cache", || async {
        due_ids(&ledger, unix_now()).await.contains(&genuine.id)
    })
    .await;
    assert!(!due_ids(&ledger, unix_now()).await.contains(&forged.id));
    assert_eq!(ledger.get(&forged.id).await.unwrap(), None);
    assert!(
        ledger
            .claim(&forged.id, unix_now(), unix_now() + 60, false)
            .await
            .unwrap()
            .is_none()
    );
    let counting = Arc::new(Counting {
        revoked: Mutex::new(Vec::new()),
    });
    let victim_key = GeneratorRef {
        namespace: "victim".into(),
        kind: "VaultDynamicSecret".into(),
        name: "db".into(),
    }
    .lookup_key();
    let generators: HashMap<GeneratorKey, Arc<dyn Generator>> =
        [(victim_key, counting.clone() as Arc<dyn Generator>)].into();
    let due = ledger.due(unix_now(), 100).await.unwrap();
    revoke_entries(&ledger, &generators, due, "sweep", Duration::from_secs(5))
        .await
        .unwrap();
    let revoked = counting.revoked.lock().unwrap().clone();
    assert!(
        revoked.is_empty(),
        "the victim's generator revoked attacker-chosen leases: {revoked:?}"
    );
}

/// Same, through a ClusterGenerator: the GeneratorState lives in the holder's namespace
/// (so a check of the object's namespace against the entry's is not enough), and the
/// cluster generator's backend credentials revoke whatever lease the tenant wrote.
#[tokio::test]
async fn review_a_forged_generator_state_never_drives_a_cluster_generator() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let attacker = holder("evil", "attacker", None);
    let mut forged = entry(&attacker, ("evil", "ClusterGenerator", "shared"), Some(1));
    forged.state = RevocationState(json!({"leaseId": "database/creds/other-team/their-lease"}));
    fake.apply(forged_state("evil", &forged));
    // A genuine entry recorded after the forgery: once the cache has it, the watch has
    // seen everything before it, and the forgery (another namespace) is not there.
    let genuine = entry(
        &holder("apps", "app", None),
        ("apps", "Password", "pw"),
        Some(1),
    );
    ledger.record(&genuine).await.unwrap();
    eventually("the genuine entry reaches the cache", || async {
        due_ids(&ledger, unix_now()).await.contains(&genuine.id)
    })
    .await;
    assert!(!due_ids(&ledger, unix_now()).await.contains(&forged.id));
    assert_eq!(ledger.get(&forged.id).await.unwrap(), None);
    assert!(
        ledger
            .claim(&forged.id, unix_now(), unix_now() + 60, false)
            .await
            .unwrap()
            .is_none()
    );
    let counting = Arc::new(Counting {
        revoked: Mutex::new(Vec::new()),
    });
    let generators: HashMap<GeneratorKey, Arc<dyn Generator>> = [(
        forged.generator.lookup_key(),
        counting.clone() as Arc<dyn Generator>,
    )]
    .into();
    let due = ledger.due(unix_now(), 100).await.unwrap();
    revoke_entries(&ledger, &generators, due, "sweep", Duration::from_secs(5))
        .await
        .unwrap();
    let revoked = counting.revoked.lock().unwrap().clone();
    assert!(
        revoked.is_empty(),
        "the ClusterGenerator revoked an attacker-chosen lease: {revoked:?}"
    );
}

/// A tenant who learns a credential handle (it names the GeneratorState, which the
/// AuthorizedIdentity lists) creates `esi-<handle>` in its own namespace: the cache is keyed
/// by id alone, so the forged object shadows the real one, and the real holder's `get` (its
/// renew or DELETE by handle) sees the tenant's entry.
#[tokio::test]
async fn review_an_id_collision_in_another_namespace_does_not_shadow_the_real_entry() {
    let fake = cluster().await;
    let ledger = replica(&fake, "a").await;
    let victim = holder("apps", "app", None);
    let real = entry(
        &victim,
        ("apps", "VaultDynamicSecret", "db"),
        Some(unix_now() + 3_600),
    );
    ledger.record(&real).await.unwrap();
    let mut forged = real.clone();
    forged.state = RevocationState(json!({"leaseId": "database/creds/someone-else"}));
    forged.expires_at = None;
    fake.apply(forged_state("evil", &forged));
    // Let the watch deliver the forged object.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = ledger.get(&real.id).await.unwrap();
    assert_eq!(
        got.as_ref(),
        Some(&real),
        "the handle resolved to another object"
    );
    // And the real credential is still swept at its expiry.
    assert!(
        due_ids(&ledger, unix_now() + 7_200)
            .await
            .contains(&real.id),
        "the real entry fell out of the sweeper's view"
    );
}
