//! Tests of the fake Kubernetes API server (`tests/common/fake_kube.rs`) with a real
//! `kube::Client` built from its kubeconfig and the kube-rs watcher: what the e2e tests of
//! `esi-server --kubernetes` rely on.

mod common;

use std::time::Duration;

use common::fake_kube::{FakeKube, Fault};
use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

fn secret(ns: &str, name: &str, value: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "data": { "k": common::b64(value) },
    })
}

fn secret_value(s: &Secret) -> String {
    let bytes = &s.data.as_ref().unwrap()["k"].0;
    String::from_utf8(bytes.clone()).unwrap()
}

type WatcherItem<K> = Result<watcher::Event<K>, watcher::Error>;

/// A kube-rs watcher polled continuously by a task (as a controller does: the watcher opens
/// its watch only when polled), its events read one by one by the test.
struct Watch<K> {
    rx: mpsc::UnboundedReceiver<WatcherItem<K>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Watch<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    fn start(api: Api<K>, config: watcher::Config) -> Watch<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut w = watcher(api, config).boxed();
            while let Some(item) = w.next().await {
                let failed = item.is_err();
                if tx.send(item).is_err() {
                    return;
                }
                if failed {
                    // The watcher retries at once when polled after an error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Watch { rx, task }
    }

    async fn event(&mut self) -> WatcherItem<K> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a watcher event within 5 s")
            .expect("the watcher goes on")
    }

    /// The next event as `Init`, `InitApply(name)`, `InitDone`, `Apply(name)`, `Delete(name)`
    /// or `Err(..)`.
    async fn next(&mut self) -> String {
        match self.event().await {
            Ok(watcher::Event::Init) => "Init".into(),
            Ok(watcher::Event::InitApply(o)) => {
                format!("InitApply({})", o.meta().name.as_deref().unwrap())
            }
            Ok(watcher::Event::InitDone) => "InitDone".into(),
            Ok(watcher::Event::Apply(o)) => format!("Apply({})", o.meta().name.as_deref().unwrap()),
            Ok(watcher::Event::Delete(o)) => {
                format!("Delete({})", o.meta().name.as_deref().unwrap())
            }
            Err(e) => format!("Err({e})"),
        }
    }
}

impl<K> Drop for Watch<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other:?}"),
    }
}

fn rv_of<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn list_then_watch_sees_create_modify_delete_in_order() {
    let fake = FakeKube::start().await;
    fake.apply(secret("default", "a", "1", json!({})));
    fake.apply(secret("other", "x", "1", json!({})));
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let mut w = Watch::start(api.clone(), watcher::Config::default());
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitApply(a)");
    assert_eq!(w.next().await, "InitDone");

    let b: Secret = serde_json::from_value(secret("default", "b", "1", json!({}))).unwrap();
    let created = api.create(&PostParams::default(), &b).await.unwrap();
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "k": common::b64("2") } })),
        )
        .await
        .unwrap();
    assert!(fake.delete("v1", "Secret", Some("default"), "b"));
    assert!(rv_of(&patched) > rv_of(&created));

    assert_eq!(w.next().await, "Apply(b)");
    match w.event().await.unwrap() {
        watcher::Event::Apply(s) => {
            assert_eq!(s.name_any(), "a");
            assert_eq!(secret_value(&s), "2");
            assert_eq!(rv_of(&s), rv_of(&patched));
        }
        other => panic!("expected Apply(a), got {other:?}"),
    }
    assert_eq!(w.next().await, "Delete(b)");
    // The object in the other namespace was never seen; the list was followed by one watch.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.path == "/api/v1/namespaces/default/secrets" && !r.is_watch())
    );
    assert!(
        reqs.iter()
            .any(|r| r.is_watch() && r.query.contains("allowWatchBookmarks=true"))
    );
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let fake = FakeKube::start().await;
    fake.apply(secret("default", "a", "1", json!({})));
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let mut w = Watch::start(api.clone(), watcher::Config::default().streaming_lists());
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitApply(a)");
    assert_eq!(w.next().await, "InitDone");
    fake.apply(secret("default", "b", "1", json!({})));
    assert_eq!(w.next().await, "Apply(b)");
    let reqs = fake.requests();
    assert!(
        reqs.iter().all(|r| r.is_watch()),
        "no list in the streaming flow: {reqs:?}"
    );
    assert!(reqs[0].query.contains("sendInitialEvents=true"));
}

#[tokio::test]
async fn too_old_resource_version_gives_410_and_the_watcher_relists() {
    let fake = FakeKube::start().await;
    fake.apply(secret("default", "a", "1", json!({})));
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let start_rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let mut w = Watch::start(api.clone(), watcher::Config::default());
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitApply(a)");
    assert_eq!(w.next().await, "InitDone");
    wait_until("the watch is open", || fake.active_watches() == 1).await;

    // The watch drops and cannot come back while b is written and the history compacted.
    fake.set_fault(Fault::RefuseWatches);
    fake.drop_watches();
    let first = w.next().await;
    assert!(first.starts_with("Err(failed to start watching"), "{first}");
    fake.apply(secret("default", "b", "1", json!({})));
    fake.compact();
    fake.set_fault(Fault::None);

    // A watch from the old resourceVersion is answered 410 Gone; the watcher re-lists.
    let ev = loop {
        match w.event().await {
            Err(watcher::Error::WatchStartFailed(_)) => continue,
            other => break other,
        }
    };
    match ev {
        Err(watcher::Error::WatchError(s)) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitApply(a)");
    assert_eq!(w.next().await, "InitApply(b)");
    assert_eq!(w.next().await, "InitDone");
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/secrets") && !r.is_watch())
        .count();
    assert_eq!(
        lists, 3,
        "the test's list, the first and the second list of the watcher"
    );

    // The same through a raw watch.
    let mut raw = api
        .watch(&WatchParams::default(), &start_rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, raw.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(s))) => assert_eq!(s.code, 410),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_resumed_within_the_history_gets_what_it_missed() {
    let fake = FakeKube::start().await;
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    fake.apply(secret("default", "a", "1", json!({})));
    fake.apply(secret("default", "a", "2", json!({})));
    fake.delete("v1", "Secret", Some("default"), "a");
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(WAIT, raw.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(s) => seen.push(format!("ADDED {}", secret_value(&s))),
            WatchEvent::Modified(s) => seen.push(format!("MODIFIED {}", secret_value(&s))),
            WatchEvent::Deleted(s) => seen.push(format!("DELETED {}", secret_value(&s))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED 1", "MODIFIED 2", "DELETED 2"]);
    // A history of one event: the watch from `rv` is now too old.
    fake.set_history_limit(1);
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, raw.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(s))) => assert_eq!(s.code, 410),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_carry_the_resource_version_and_timeout_ends_the_watch() {
    let fake = FakeKube::start().await;
    fake.set_bookmark_interval(Duration::from_millis(100));
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let started = std::time::Instant::now();
    let mut s = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        Some(Ok(WatchEvent::Bookmark(b))) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    let written = fake.apply(secret("default", "a", "1", json!({})));
    let written_rv = written["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bookmark_after = None;
    loop {
        match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
            Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.resource_version().unwrap(), written_rv),
            Some(Ok(WatchEvent::Bookmark(b))) => bookmark_after = Some(b.metadata.resource_version),
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert_eq!(bookmark_after.as_deref(), Some(written_rv.as_str()));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // Without allowWatchBookmarks, none are sent.
    let mut s = api
        .watch(
            &WatchParams::default().disable_bookmarks().timeout(1),
            &written_rv,
        )
        .await
        .unwrap()
        .boxed();
    assert!(
        tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn status_subresource_leaves_spec_and_generation_alone() {
    let fake = FakeKube::start().await;
    fake.register("example.com", "v1", "Widget", "widgets", true, true);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client().await, "default", &ar);
    let obj = DynamicObject::new("w", &ar)
        .within("default")
        .data(json!({ "spec": { "size": 1 }, "status": { "ready": true } }));
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.data["status"], Value::Null, "create drops .status");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // A status patch that also tries to change the spec changes only the status.
    let p = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": 5 }, "status": { "ready": true } })),
        )
        .await
        .unwrap();
    assert_eq!(p.data["spec"]["size"], 1);
    assert_eq!(p.data["status"]["ready"], true);
    assert_eq!(p.metadata.generation, Some(1));
    assert!(rv_of(&p) > rv_of(&created));

    // A write of the main resource ignores .status and bumps the generation on a spec change.
    let mut cur = api.get("w").await.unwrap();
    cur.data["spec"]["size"] = json!(2);
    cur.data["status"] = json!({ "ready": false });
    let r = api
        .replace("w", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(r.data["status"]["ready"], true);
    assert_eq!(r.data["spec"]["size"], 2);
    assert_eq!(r.metadata.generation, Some(2));

    // Metadata only: same generation, new resourceVersion; the same write again is a no-op.
    let label = Patch::Merge(json!({ "metadata": { "labels": { "a": "b" } } }));
    let l = api
        .patch("w", &PatchParams::default(), &label)
        .await
        .unwrap();
    assert_eq!(l.metadata.generation, Some(2));
    assert!(rv_of(&l) > rv_of(&r));
    let again = api
        .patch("w", &PatchParams::default(), &label)
        .await
        .unwrap();
    assert_eq!(
        rv_of(&again),
        rv_of(&l),
        "a write that changes nothing keeps the version"
    );

    // PUT /status with a stale resourceVersion is a conflict; with the current one it writes.
    let mut st = api.get_status("w").await.unwrap();
    st.data["status"] = json!({ "ready": false, "observedGeneration": 2 });
    st.metadata.resource_version = Some(r.resource_version().unwrap());
    let err = api
        .replace_status("w", &PostParams::default(), &st)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
    st.metadata.resource_version = Some(l.resource_version().unwrap());
    let s = api
        .replace_status("w", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(s.data["status"]["observedGeneration"], 2);
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(s.labels()["a"], "b");

    // A kind without a status subresource has no /status.
    fake.apply(secret("default", "a", "1", json!({})));
    let secrets: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let err = secrets.get_status("a").await.unwrap_err();
    assert_eq!(api_error(err).0, 404);
}

#[tokio::test]
async fn put_with_a_stale_resource_version_is_a_conflict() {
    let fake = FakeKube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client().await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "c" }, "data": { "k": "0" }
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let err = api.create(&PostParams::default(), &cm).await.unwrap_err();
    assert_eq!(api_error(err), (409, "AlreadyExists".into()));

    let v1 = api.get("c").await.unwrap();
    let mut a = v1.clone();
    a.data = Some([("k".to_string(), "a".to_string())].into());
    api.replace("c", &PostParams::default(), &a).await.unwrap();
    let mut b = v1.clone();
    b.data = Some([("k".to_string(), "b".to_string())].into());
    let err = api
        .replace("c", &PostParams::default(), &b)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "a");

    let err = api.get("missing").await.unwrap_err();
    assert_eq!(api_error(err), (404, "NotFound".into()));
    // Delete answers a Success Status; a second delete is a 404.
    let gone = api.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(gone.is_right());
    let err = api.delete("c", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_error(err).0, 404);
}

/// PATCH with a raw body and content type (kube's `Patch::Json` needs a feature we do not enable).
async fn raw_patch(fake: &FakeKube, path: &str, content_type: &str, body: Value) -> (u16, Value) {
    let http = common::client_trusting(fake.ca_pem().as_bytes());
    let resp = http
        .patch(format!("{}{path}", fake.url))
        .bearer_auth(fake.token())
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let fake = FakeKube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client().await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "c" }, "data": { "a": "1" }
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let data = |c: ConfigMap| c.data.unwrap_or_default().into_iter().collect::<Vec<_>>();

    let m = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "a": null, "b": "2" } })),
        )
        .await
        .unwrap();
    assert_eq!(data(m), [("b".to_string(), "2".to_string())]);

    let path = "/api/v1/namespaces/default/configmaps/c";
    let (code, body) = raw_patch(
        &fake,
        path,
        "application/json-patch+json",
        json!([
            { "op": "test", "path": "/data/b", "value": "2" },
            { "op": "replace", "path": "/data/b", "value": "3" }
        ]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["b"], "3");
    let (code, body) = raw_patch(
        &fake,
        path,
        "application/json-patch+json",
        json!([{ "op": "test", "path": "/data/b", "value": "2" }]),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, body) = raw_patch(&fake, path, "application/xml", json!({})).await;
    assert_eq!((code, body["kind"].as_str()), (415, Some("Status")));

    let s = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "data": { "c": "4" } })),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["c"], "4");

    // Server-side apply creates a missing object and records the field manager.
    let d = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "d" }, "data": { "x": "1" }
    });
    let applied = api
        .patch("d", &PatchParams::apply("tester"), &Patch::Apply(&d))
        .await
        .unwrap();
    assert_eq!(applied.data.as_ref().unwrap()["x"], "1");
    let managers: Vec<_> = applied
        .managed_fields()
        .iter()
        .map(|f| f.manager.clone().unwrap())
        .collect();
    assert_eq!(managers, ["tester"]);
    let d2 = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "d" }, "data": { "y": "2" }
    });
    let applied = api
        .patch("d", &PatchParams::apply("tester"), &Patch::Apply(&d2))
        .await
        .unwrap();
    assert_eq!(
        applied.data.as_ref().unwrap().len(),
        2,
        "approximated as a merge"
    );
    let (code, _) = raw_patch(
        &fake,
        "/api/v1/namespaces/default/configmaps/d",
        "application/apply-patch+yaml",
        d2,
    )
    .await;
    assert_eq!(code, 400, "an apply patch needs a fieldManager");

    // A patch that names another resourceVersion is a conflict; a patch of a missing object a 404.
    let err = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "resourceVersion": "1" } })),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
    let err = api
        .patch(
            "nope",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": {} })),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 404);
}

#[tokio::test]
async fn lease_updates_racing_on_one_resource_version_one_conflicts() {
    let fake = FakeKube::start().await;
    fake.add_user("replica-a");
    fake.add_user("replica-b");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "esi-leader" },
        "spec": { "holderIdentity": "nobody", "leaseDurationSeconds": 15 }
    }))
    .unwrap();
    Api::<Lease>::namespaced(fake.client().await, "default")
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let a: Api<Lease> = Api::namespaced(fake.client_as("replica-a").await, "default");
    let b: Api<Lease> = Api::namespaced(fake.client_as("replica-b").await, "default");
    let (mut la, mut lb) = (
        a.get("esi-leader").await.unwrap(),
        b.get("esi-leader").await.unwrap(),
    );
    assert_eq!(la.resource_version(), lb.resource_version());
    la.spec.as_mut().unwrap().holder_identity = Some("replica-a".into());
    lb.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let pp = PostParams::default();
    let (ra, rb) = tokio::join!(
        a.replace("esi-leader", &pp, &la),
        b.replace("esi-leader", &pp, &lb)
    );
    assert!(ra.is_ok() != rb.is_ok(), "exactly one wins: {ra:?} {rb:?}");
    let (winner, loser_err) = match (ra, rb) {
        (Ok(_), Err(e)) => ("replica-a", e),
        (Err(e), Ok(_)) => ("replica-b", e),
        _ => unreachable!(),
    };
    assert_eq!(api_error(loser_err), (409, "Conflict".into()));
    let stored = fake
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "esi-leader",
        )
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], winner);
    // The request log tells the replicas apart.
    let puts: Vec<(String, u16)> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
        .map(|r| (r.user.unwrap(), r.status))
        .collect();
    assert_eq!(puts.len(), 2);
    assert!(puts.contains(&(winner.to_string(), 200)));
    assert!(puts.iter().any(|(u, s)| u != winner && *s == 409));
}

#[tokio::test]
async fn token_request_returns_a_token_for_the_requested_audience() {
    let fake = FakeKube::start().await;
    fake.sign_tokens_with_fixture("https://fake.issuer.test", "rsa-1");
    let client = fake.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "app" } })).unwrap();
    let sa = sas.create(&PostParams::default(), &sa).await.unwrap();
    let request = |audiences: Vec<String>, secs: i64| TokenRequest {
        spec: TokenRequestSpec {
            audiences,
            expiration_seconds: Some(secs),
            ..Default::default()
        },
        ..Default::default()
    };
    let tr = sas
        .create_token_request(
            "app",
            &PostParams::default(),
            &request(vec!["esi-federation".into()], 900),
        )
        .await
        .unwrap();
    let token = tr.status.unwrap().token;

    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(common::jwk("rsa-1")).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["esi-federation"]);
    validation.set_issuer(&["https://fake.issuer.test"]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "system:serviceaccount:default:app");
    assert_eq!(claims["aud"], json!(["esi-federation"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        sa.uid().unwrap()
    );
    // Another audience is not accepted by a validation for this one.
    let other = sas
        .create_token_request(
            "app",
            &PostParams::default(),
            &request(vec!["other".into()], 900),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    assert!(jsonwebtoken::decode::<Value>(&other, &key, &validation).is_err());

    let err = sas
        .create_token_request("missing", &PostParams::default(), &request(vec![], 900))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (404, "NotFound".into()));
    let err = sas
        .create_token_request("app", &PostParams::default(), &request(vec![], 60))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".into()));
}

#[tokio::test]
async fn requests_without_a_known_token_get_401() {
    let fake = FakeKube::start().await;
    let http = common::client_trusting(fake.ca_pem().as_bytes());
    let url = format!("{}/api/v1/namespaces/default/secrets", fake.url);
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    let resp = http
        .get(&url)
        .bearer_auth("fake-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(&url)
        .bearer_auth(fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| (r.user.clone(), r.status))
            .collect::<Vec<_>>(),
        [(None, 401), (None, 401), (Some("admin".to_string()), 200)]
    );
    // Discovery needs the token too.
    let resp = http.get(format!("{}/apis", fake.url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn kube_discovery_finds_builtin_and_registered_kinds() {
    use kube::discovery::{Discovery, Scope};
    let fake = FakeKube::start().await;
    fake.register("example.com", "v1", "Widget", "widgets", true, true);
    let d = Discovery::new(fake.client().await).run().await.unwrap();
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
        .unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope.clone()),
        ("leases", Scope::Namespaced)
    );
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope.clone()),
        ("namespaces", Scope::Cluster)
    );
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .unwrap();
    assert_eq!(ar.plural, "widgets");
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "widgets/status" || sub.plural == "status")
    );
    assert!(
        d.resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Gadget"))
            .is_none()
    );
    // Through the dynamic API of the resolved kind.
    fake.apply(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": { "name": "w", "namespace": "default" }, "spec": {}
    }));
    let api: Api<DynamicObject> = Api::all_with(fake.client().await, &ar);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn label_and_field_selectors_on_lists_and_watches() {
    let fake = FakeKube::start().await;
    fake.apply(secret(
        "default",
        "a",
        "1",
        json!({ "app": "web", "tier": "front" }),
    ));
    fake.apply(secret("default", "b", "1", json!({ "app": "db" })));
    fake.apply(secret("default", "c", "1", json!({})));
    fake.apply(secret("other", "d", "1", json!({ "app": "web" })));
    let client = fake.client().await;
    let all: Api<Secret> = Api::all(client.clone());
    let default: Api<Secret> = Api::namespaced(client, "default");
    let names = |l: kube::core::ObjectList<Secret>| {
        l.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
    };
    let by_labels = |s: &str| ListParams::default().labels(s);
    assert_eq!(
        names(all.list(&by_labels("app=web")).await.unwrap()),
        ["a", "d"]
    );
    assert_eq!(
        names(default.list(&by_labels("app!=web")).await.unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        names(default.list(&by_labels("app")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(default.list(&by_labels("!app")).await.unwrap()),
        ["c"]
    );
    assert_eq!(
        names(all.list(&by_labels("app in (web, db),tier")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(default.list(&by_labels("app notin (web)")).await.unwrap()),
        ["b", "c"]
    );
    let by_fields = |s: &str| ListParams::default().fields(s);
    assert_eq!(
        names(default.list(&by_fields("metadata.name=b")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(
            all.list(&by_fields("metadata.namespace=other"))
                .await
                .unwrap()
        ),
        ["d"]
    );
    assert_eq!(
        names(
            all.list(&by_fields("metadata.namespace!=default"))
                .await
                .unwrap()
        ),
        ["d"]
    );
    let err = all.list(&by_fields("spec.nodeName=x")).await.unwrap_err();
    assert_eq!(api_error(err), (400, "BadRequest".into()));

    // A watch with a selector: an object leaving it is DELETED, one entering it ADDED.
    let mut w = Watch::start(
        default.clone(),
        watcher::Config::default().labels("app=web"),
    );
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitApply(a)");
    assert_eq!(w.next().await, "InitDone");
    let relabel = |app: &str| Patch::Merge(json!({ "metadata": { "labels": { "app": app } } }));
    default
        .patch("a", &PatchParams::default(), &relabel("api"))
        .await
        .unwrap();
    default
        .patch("c", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap();
    default
        .patch("b", &PatchParams::default(), &relabel("cache"))
        .await
        .unwrap();
    default
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "k": "eA==" } })),
        )
        .await
        .unwrap();
    assert_eq!(w.next().await, "Delete(a)");
    assert_eq!(w.next().await, "Apply(c)");
    assert_eq!(w.next().await, "Apply(c)", "b's change is not seen");
}

#[tokio::test]
async fn injected_faults_and_dropped_watches() {
    let fake = FakeKube::start().await;
    fake.apply(secret("default", "a", "1", json!({})));
    let api: Api<Secret> = Api::namespaced(fake.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    // An open watch ends when dropped.
    let mut s = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    wait_until("the watch is open", || fake.active_watches() == 1).await;
    fake.drop_watches();
    assert!(
        tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap()
            .is_none()
    );
    wait_until("the watch is closed", || fake.active_watches() == 0).await;

    fake.set_fault(Fault::RefuseWatches);
    let err = api
        .watch(&WatchParams::default(), &rv)
        .await
        .err()
        .expect("refused");
    assert_eq!(api_error(err).0, 500);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    fake.set_fault(Fault::GoneWatches);
    let mut s = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap()
            .is_none()
    );

    fake.set_fault(Fault::RefuseReads);
    assert_eq!(
        api_error(api.list(&ListParams::default()).await.unwrap_err()).0,
        500
    );
    assert_eq!(api_error(api.get("a").await.unwrap_err()).0, 500);
    // Writes still work.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "x": "y" } } })),
    )
    .await
    .unwrap();

    fake.set_fault(Fault::None);
    assert_eq!(api.get("a").await.unwrap().labels()["x"], "y");
}

#[tokio::test]
async fn kubeconfig_file_works_for_a_client() {
    let fake = FakeKube::start().await;
    let token = fake.add_user("replica-1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    fake.kubeconfig_as(&path, "replica-1");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&token) && text.contains(&fake.url));
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    assert!(
        ns.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(fake.requests()[0].user.as_deref(), Some("replica-1"));
}

#[derive(
    kube::CustomResource, serde::Deserialize, serde::Serialize, Clone, Debug, schemars::JsonSchema,
)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus"
)]
struct GadgetSpec {
    size: u32,
}

#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, Default, schemars::JsonSchema)]
struct GadgetStatus {
    ready: bool,
}

#[tokio::test]
async fn a_custom_resource_type_round_trips_with_its_status() {
    let fake = FakeKube::start().await;
    fake.register_kind::<Gadget>(true, true);
    let api: Api<Gadget> = Api::namespaced(fake.client().await, "default");
    let g = api
        .create(
            &PostParams::default(),
            &Gadget::new("g", GadgetSpec { size: 3 }),
        )
        .await
        .unwrap();
    assert_eq!((g.spec.size, g.status.is_none()), (3, true));
    let pp = PatchParams::apply("esi-server").force();
    let status = Patch::Apply(json!({
        "apiVersion": "example.com/v1", "kind": "Gadget", "status": { "ready": true }
    }));
    let g = api.patch_status("g", &pp, &status).await.unwrap();
    assert!(g.status.unwrap().ready);
    assert_eq!(g.metadata.generation, Some(1));
    let stored = fake
        .get("example.com/v1", "Gadget", Some("default"), "g")
        .unwrap();
    assert_eq!(stored["status"]["ready"], true);
    assert_eq!(
        stored["metadata"]["managedFields"][0]["subresource"],
        "status"
    );
    let statuses: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.is_status_write())
        .collect();
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        statuses[0].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(statuses[0].query.contains("fieldManager=esi-server"));
}

/// e2e tests block their thread (`common::Server::start` reads the child's stdout): the fake
/// runs on a runtime of its own and answers meanwhile, even under a current-thread test.
#[tokio::test(flavor = "current_thread")]
async fn the_fake_answers_while_the_test_thread_blocks() {
    let fake = FakeKube::start().await;
    let url = format!("{}/api/v1/namespaces", fake.url);
    let (ca, token) = (fake.ca_pem().to_string(), fake.token());
    let other = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let http = common::client_trusting(ca.as_bytes());
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            resp.status().as_u16()
        })
    });
    // Blocks the test's only runtime thread until the other thread has its answer.
    assert_eq!(other.join().unwrap(), 200);
}

#[tokio::test]
async fn finalizers_hold_a_delete_until_the_last_one_is_removed() {
    let fake = FakeKube::start().await;
    let api: Api<ConfigMap> = Api::namespaced(fake.client().await, "default");
    let mut w = Watch::start(api.clone(), watcher::Config::default());
    assert_eq!(w.next().await, "Init");
    assert_eq!(w.next().await, "InitDone");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "c", "finalizers": ["example.com/a", "example.com/b"] },
        "data": { "k": "0" }
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(w.next().await, "Apply(c)");

    // DELETE only marks it: the object comes back with a deletionTimestamp.
    let marked = api.delete("c", &DeleteParams::default()).await.unwrap();
    let marked = marked.left().expect("the object, still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(w.next().await, "Apply(c)");
    let again = api.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(again.is_left(), "a second DELETE changes nothing");

    // No new finalizer while it is being deleted; the timestamp cannot be cleared.
    let mut added = api.get("c").await.unwrap();
    added
        .metadata
        .finalizers
        .as_mut()
        .unwrap()
        .push("example.com/c".into());
    let err = api
        .replace("c", &PostParams::default(), &added)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".into()));
    let mut cleared = api.get("c").await.unwrap();
    cleared.metadata.deletion_timestamp = None;
    cleared.metadata.finalizers = Some(vec!["example.com/a".into()]);
    let kept = api
        .replace("c", &PostParams::default(), &cleared)
        .await
        .unwrap();
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert_eq!(w.next().await, "Apply(c)");

    // Removing the last finalizer completes the delete: MODIFIED, then DELETED.
    let (code, _) = raw_patch(
        &fake,
        "/api/v1/namespaces/default/configmaps/c",
        "application/merge-patch+json",
        json!({ "metadata": { "finalizers": null } }),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(w.next().await, "Apply(c)");
    assert_eq!(w.next().await, "Delete(c)");
    assert_eq!(api_error(api.get("c").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let fake = FakeKube::start().await;
    let client = fake.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let owner: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "owner" } })).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    let owned = |name: &str, finalizers: Value| -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "finalizers": finalizers,
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid,
                    "controller": true
                }]
            },
            "data": { "k": common::b64("v") }
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &owned("plain", json!([])))
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &owned("held", json!(["example.com/x"])),
        )
        .await
        .unwrap();
    let other: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "unrelated" } })).unwrap();
    secrets
        .create(&PostParams::default(), &other)
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(secrets.get("plain").await.unwrap_err()).0, 404);
    let held = secrets.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "a dependent with finalizers is only marked"
    );
    secrets.get("unrelated").await.unwrap();
}
