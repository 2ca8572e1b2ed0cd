//! A small, stateful fake of the Kubernetes API server for end-to-end tests, in process.
//!
//! The e2e tests run the real `esi-server --kubernetes` against it (a kubeconfig from
//! [`FakeKube::kubeconfig`]) and drive it from the test ([`FakeKube::apply`], [`FakeKube::delete`]),
//! with a real `kube::Client` ([`FakeKube::client`]) where a test acts as `kubectl`.
//!
//! Why our own: no Kubernetes API server can be installed on the build machines, and the one
//! existing candidate, PyPI `kmock`, is a pytest mocking library (aiohttp): its emulator gives
//! lists a fixed `resourceVersion` of `"..."`, sets no per-object `resourceVersion`, `uid` or
//! `generation`, replays every object as `ADDED` on each watch whatever `resourceVersion` is asked
//! (so no `410 Gone`, no bookmarks), has no status subresource, no optimistic concurrency (`409`)
//! and no label or field selectors. Those are exactly what a kube-rs watcher, a leader election
//! and status writing depend on, so this module implements them, and little else.
//!
//! # What it does
//! - HTTPS only on `127.0.0.1:0` (a CA of its own, [`super::test_ca`]), bearer-token
//!   authentication: a request without a known token gets `401` (several tokens, each mapped to
//!   a user name, so a test tells replicas apart: [`FakeKube::add_user`]).
//! - Resources by (group, version, plural), registered with kind and scope
//!   ([`FakeKube::register`]); pre-registered: core `v1` Secrets, ConfigMaps, ServiceAccounts,
//!   Namespaces and `coordination.k8s.io/v1` Leases. Discovery (`/api`, `/api/v1`, `/apis`,
//!   `/apis/{g}`, `/apis/{g}/{v}`, `/version`) lists them, so `kube::discovery` works.
//! - One global `resourceVersion` counter; the server sets `metadata.uid`,
//!   `creationTimestamp`, `resourceVersion` and `generation` (1 on create, +1 when anything but
//!   `metadata` and `status` changes, as for a CRD with a status subresource). A write that
//!   changes nothing is a no-op: same `resourceVersion`, no watch event.
//! - list (cluster-wide and per namespace) with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`,
//!   `!k`, `k in (a,b)`, `k notin (a,b)`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace` with `=`, `==`, `!=`); the list carries the current `resourceVersion`.
//! - watch (`?watch=true`): from `resourceVersion` N, every event after N from a bounded history
//!   ([`FakeKube::set_history_limit`], [`FakeKube::compact`]); N older than the history gives an
//!   `ERROR` event with a `410 Expired` Status (what makes a kube-rs watcher re-list); no
//!   `resourceVersion` (or `"0"`) gives the current objects as `ADDED` first. With
//!   `allowWatchBookmarks=true`, `BOOKMARK` events every [`FakeKube::set_bookmark_interval`];
//!   `sendInitialEvents=true` (kube-rs `streaming_lists()`) ends the initial `ADDED` events with
//!   the `k8s.io/initial-events-end` bookmark; `timeoutSeconds` ends the stream. Selectors apply
//!   to watches as to lists, and an object leaving (entering) the selection is sent as `DELETED`
//!   (`ADDED`), like the real watch cache.
//! - get, create (`409 AlreadyExists`; `generateName`), update/PUT (`409 Conflict` when
//!   `metadata.resourceVersion` is stale), patch with `application/merge-patch+json` (RFC 7386),
//!   `application/json-patch+json` (RFC 6902, the `json-patch` crate; a failed `test` is `422`),
//!   `application/strategic-merge-patch+json` (treated as a merge patch) and
//!   `application/apply-patch+yaml` (server-side apply approximated as a merge patch that creates
//!   a missing object; `fieldManager` is required and recorded in `managedFields`); a patch that
//!   sets another `metadata.resourceVersion` is a `409`; delete (answers a `Success` Status;
//!   `preconditions.uid` / `preconditions.resourceVersion` are checked).
//! - the `/status` subresource for kinds registered `has_status`: GET, PUT and PATCH there
//!   change only `.status`; writes to the main resource ignore `.status` (create drops it).
//! - Finalizers: deleting an object whose `metadata.finalizers` is not empty only sets
//!   `deletionTimestamp` (a `MODIFIED` event); the update that empties the list removes it
//!   (`MODIFIED`, then `DELETED`). While it is being deleted no finalizer may be added (`422`),
//!   and clients cannot set or clear `deletionTimestamp` (test controls such as
//!   [`FakeKube::apply`] can, to stage an object being deleted).
//! - Garbage collection: when an object is removed, every object whose
//!   `metadata.ownerReferences` names its `uid` is deleted in turn (background propagation, so
//!   a dependent with finalizers is only marked).
//! - TokenRequest: `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` signs claims
//!   (`iss`, `sub` = `system:serviceaccount:{ns}:{name}`, `aud` = `spec.audiences`, `iat`,
//!   `nbf`, `exp` = now + `spec.expirationSeconds` (default 3600, at least 600), `jti`,
//!   `kubernetes.io.namespace` / `.serviceaccount`) with the signer the test set
//!   ([`FakeKube::set_token_signer`], [`FakeKube::sign_tokens_with_fixture`]).
//! - `GET /.well-known/openid-configuration`: `{issuer, jwks_uri}` (the token signer's issuer,
//!   else [`DEFAULT_ISSUER`]); `403` after [`FakeKube::refuse_issuer_discovery`].
//! - Errors are `Status` objects with `reason` and `code` (`NotFound`, `AlreadyExists`,
//!   `Conflict`, `Invalid`, `BadRequest`, `Unauthorized`, `MethodNotAllowed`, `Expired`,
//!   `InternalError`).
//! - For the test: a request log ([`FakeKube::requests`]: method, path, query, content type,
//!   User-Agent, the user of the token, status code), and faults ([`FakeKube::set_fault`],
//!   [`FakeKube::drop_watches`]) to make watches (or all reads) fail or drop, writes refused
//!   ([`FakeKube::fail_next_writes`]) or applied with their answer lost
//!   ([`FakeKube::lose_answers_to_next_writes`]).
//!
//! # What it does NOT do
//! - No RBAC or any authorization (every known token may do everything), no admission, no
//!   validation against any schema (CRD OpenAPI, CEL): objects are stored as given.
//! - No real server-side apply: no field ownership, no conflicts, `force` is ignored, lists are
//!   replaced (not merged by key); likewise strategic merge is a plain merge patch.
//! - No graceful deletion (`gracePeriodSeconds` and `propagationPolicy` are ignored: dependents
//!   are always collected in the background) and no DELETE of a collection.
//! - No pagination (`limit` and `continue` are ignored: one page with everything); the
//!   `resourceVersion` / `resourceVersionMatch` of a list are ignored (always the latest state);
//!   a watch from a `resourceVersion` in the future starts from now; `sendInitialEvents` with a
//!   `resourceVersion` other than `""`/`"0"` resumes from the history like a plain watch.
//! - No `dryRun` (refused with `400`), no protobuf, no table output, no aggregated discovery,
//!   no version conversion (a group/plural registered under two versions shares its objects).
//! - Namespaces need not exist for their objects; `generation` is kept on every kind (real core
//!   kinds such as Secrets have none).
//! - TokenRequest does not check `boundObjectRef` and adds no pod claims.
//! - Request bodies over 2 MiB are refused by axum with a plain-text 413 (not a Status); a watch
//!   that falls more than 4096 events behind is ended (its client resumes or re-lists).
//! - Not fast and not meant for load: one mutex around the store.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::{TestCa, install_crypto, test_ca};

/// The user of [`FakeKube::token`], [`FakeKube::kubeconfig`] and [`FakeKube::client`].
pub const DEFAULT_USER: &str = "admin";
/// The API server's issuer when no token signer names one.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Watch events kept for watches that resume from a `resourceVersion` (default).
const DEFAULT_HISTORY: usize = 1000;
/// Requests kept in the log; the oldest are dropped past this.
const MAX_REQUEST_LOG: usize = 50_000;
/// Upper bound of a watch's `timeoutSeconds`.
const MAX_WATCH_TIMEOUT_SECS: u64 = 3600;

/// A kind served by the fake: `/apis/{group}/{version}/…/{plural}` (`/api/v1/…` for the core group "").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: `.status` is written only there.
    pub has_status: bool,
}

impl ResourceDef {
    /// `v1` for the core group, else `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (`plural` for the core group), as in Kubernetes' messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn details(&self, name: &str) -> Value {
        json!({ "name": name, "group": self.group, "kind": self.plural })
    }
}

/// One request the fake answered, in arrival order.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// The user name of the bearer token (None: no or unknown token, answered 401).
    pub user: Option<String>,
    /// HTTP status of the answer (200 for a watch, whose events follow).
    pub status: u16,
}

impl RequestRecord {
    /// A write (`PUT` or `PATCH`) to a `/status` subresource.
    pub fn is_status_write(&self) -> bool {
        (self.method == "PUT" || self.method == "PATCH") && self.path.ends_with("/status")
    }

    /// A `watch=true` (or `watch=1`) request.
    pub fn is_watch(&self) -> bool {
        url::form_urlencoded::parse(self.query.as_bytes())
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    }
}

/// A fault the fake injects until set back to [`Fault::None`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// New watch requests answer `500 InternalError` (lists and gets still work).
    RefuseWatches,
    /// New watch requests answer one `ERROR` event with a `410 Expired` Status (as if their
    /// `resourceVersion` were too old), then end.
    GoneWatches,
    /// Lists, gets and watches answer `500 InternalError` (writes still work).
    RefuseReads,
    /// As [`Fault::RefuseReads`], for the resource of this plural only.
    RefuseReadsOf(&'static str),
}

type Signer = Arc<dyn Fn(&Value) -> String + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

/// A change of the store, kept in the watch history and broadcast to open watches.
#[derive(Debug)]
struct Event {
    rv: u64,
    group: String,
    plural: String,
    etype: EventType,
    object: Value,
    /// The object before a modification (to send selector transitions).
    prev: Option<Value>,
}

/// (group, plural, namespace or "", name)
type ObjKey = (String, String, String, String);

struct Store {
    rv: u64,
    resources: Vec<ResourceDef>,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events with a resourceVersion at or below this are forgotten.
    compacted: u64,
    /// A test control ([`FakeKube::apply`]) is writing: it may set `deletionTimestamp`, as
    /// the API server itself does.
    as_system: bool,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// (user, token)
    users: Mutex<Vec<(String, String)>>,
    requests: Mutex<VecDeque<RequestRecord>>,
    fault: Mutex<Fault>,
    /// (plural, how many more) writes answered `500` ([`FakeKube::fail_next_writes`]).
    failing_writes: Mutex<Option<(String, u32)>>,
    /// (path prefix, how many more) writes applied, then answered `504`
    /// ([`FakeKube::lose_answers_to_next_writes`]).
    lost_answers: Mutex<Option<(String, u32)>>,
    /// (path, how many more) `PATCH`/`PUT`s preceded by another writer's change of the object
    /// ([`FakeKube::change_before_next_writes`]).
    changed_before: Mutex<Option<(String, u32)>>,
    /// `/.well-known/openid-configuration` answers `403` ([`FakeKube::refuse_issuer_discovery`]).
    refuse_discovery: std::sync::atomic::AtomicBool,
    drop_watches: watch::Sender<u64>,
    bookmark_interval: Mutex<Duration>,
    /// (issuer, signer)
    signer: Mutex<Option<(String, Signer)>>,
    active_watches: AtomicUsize,
    /// Requests to this exact path are never answered (a black-holed request).
    hang_path: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake API server, served by a runtime of its own (so any test flavour works, and a test
/// that blocks does not stall it); stops when dropped.
pub struct FakeKube {
    /// `https://127.0.0.1:{port}`
    pub url: String,
    pub ca: TestCa,
    shared: Arc<Shared>,
    handle: axum_server::Handle<SocketAddr>,
    /// The fake's own runtime (one worker thread): it keeps answering while the test blocks
    /// (a current-thread `#[tokio::test]` reading a child's output, `std::thread::sleep`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeKube {
    /// Starts the fake on `127.0.0.1:0` with the built-in kinds and one user, [`DEFAULT_USER`].
    pub async fn start() -> FakeKube {
        install_crypto();
        let ca = test_ca();
        let (events, _) = broadcast::channel(4096);
        let (drop_watches, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                resources: Vec::new(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: DEFAULT_HISTORY,
                compacted: 0,
                as_system: false,
            }),
            events,
            users: Mutex::new(vec![(DEFAULT_USER.to_string(), random_token())]),
            requests: Mutex::new(VecDeque::new()),
            fault: Mutex::new(Fault::None),
            failing_writes: Mutex::new(None),
            lost_answers: Mutex::new(None),
            changed_before: Mutex::new(None),
            refuse_discovery: std::sync::atomic::AtomicBool::new(false),
            drop_watches,
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            signer: Mutex::new(None),
            active_watches: AtomicUsize::new(0),
            hang_path: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            ca.cert_pem.clone().into_bytes(),
            ca.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-kube")
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            axum_server::from_tcp_rustls(listener, config)
                .unwrap()
                .handle(h)
                .serve(app.into_make_service())
                .await
                .unwrap();
        });
        let fake = FakeKube {
            url: format!("https://127.0.0.1:{}", addr.port()),
            ca,
            shared,
            handle,
            runtime: Some(runtime),
        };
        fake.register("", "v1", "Secret", "secrets", true, false);
        fake.register("", "v1", "ConfigMap", "configmaps", true, false);
        fake.register("", "v1", "ServiceAccount", "serviceaccounts", true, false);
        fake.register("", "v1", "Namespace", "namespaces", false, true);
        fake.register("coordination.k8s.io", "v1", "Lease", "leases", true, false);
        fake
    }

    /// Serves a kind (idempotent; a second registration of the same group/version/plural
    /// replaces the first). Objects are stored per (group, plural).
    pub fn register(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        has_status: bool,
    ) {
        let def = ResourceDef {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            has_status,
        };
        let mut store = lock(&self.shared.store);
        store
            .resources
            .retain(|r| !(r.group == group && r.version == version && r.plural == plural));
        store.resources.push(def);
    }

    /// Serves the kind of the Rust type `K` (a `kube::CustomResource` or a k8s-openapi type).
    pub fn register_kind<K: kube::Resource<DynamicType = ()>>(
        &self,
        namespaced: bool,
        has_status: bool,
    ) {
        self.register(
            &K::group(&()),
            &K::version(&()),
            &K::kind(&()),
            &K::plural(&()),
            namespaced,
            has_status,
        );
    }

    /// The CA that signed the fake's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.ca_pem
    }

    /// The bearer token of [`DEFAULT_USER`].
    pub fn token(&self) -> String {
        self.token_of(DEFAULT_USER)
    }

    /// Adds a user with a fresh random token and returns the token (the existing token when
    /// the user exists). Requests with it are logged with `user`.
    pub fn add_user(&self, user: &str) -> String {
        let mut users = lock(&self.shared.users);
        if let Some((_, t)) = users.iter().find(|(u, _)| u == user) {
            return t.clone();
        }
        let token = random_token();
        users.push((user.to_string(), token.clone()));
        token
    }

    fn token_of(&self, user: &str) -> String {
        lock(&self.shared.users)
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no user {user:?} (FakeKube::add_user)"))
    }

    /// A kubeconfig (server URL, CA data, the token of `user`, namespace `default`), YAML.
    pub fn kubeconfig_yaml(&self, user: &str) -> String {
        let token = self.token_of(user);
        format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: fake
  context:
    cluster: fake
    user: {user}
    namespace: default
current-context: fake
"#,
            url = self.url,
            ca = super::b64(&self.ca.ca_pem),
        )
    }

    /// Writes the kubeconfig of [`DEFAULT_USER`] to `path` (for `KUBECONFIG`).
    pub fn kubeconfig(&self, path: &Path) {
        self.kubeconfig_as(path, DEFAULT_USER);
    }

    /// Writes the kubeconfig of `user` to `path` (one per replica, to tell their requests apart).
    pub fn kubeconfig_as(&self, path: &Path, user: &str) {
        std::fs::write(path, self.kubeconfig_yaml(user)).unwrap();
    }

    /// A `kube::Client` as [`DEFAULT_USER`], built from the kubeconfig.
    pub async fn client(&self) -> kube::Client {
        self.client_as(DEFAULT_USER).await
    }

    /// A `kube::Client` as `user`, built from the kubeconfig.
    pub async fn client_as(&self, user: &str) -> kube::Client {
        install_crypto();
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml(user)).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces `obj` (its `apiVersion` and `kind` must be registered) as a PUT
    /// would, with the same watch events: `.status` is ignored for kinds with a status
    /// subresource (see [`FakeKube::apply_status`]), `metadata.resourceVersion` is ignored.
    /// Returns the stored object. Panics when the write is refused.
    pub fn apply(&self, obj: Value) -> Value {
        self.apply_part(obj, Part::Main)
    }

    /// Writes `.status` of an existing object, as a PUT to `/status` would.
    pub fn apply_status(&self, obj: Value) -> Value {
        self.apply_part(obj, Part::Status)
    }

    fn apply_part(&self, mut obj: Value, part: Part) -> Value {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let def = self.def_of(&api_version, &kind);
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let mut store = lock(&self.shared.store);
        let key = obj_key(&def, ns.as_deref(), &name);
        store.as_system = true;
        let result = if store.objects.contains_key(&key) || part == Part::Status {
            store.update(&self.shared.events, &def, ns.as_deref(), &name, obj, part)
        } else {
            store.create(&self.shared.events, &def, ns.as_deref(), obj, None)
        };
        store.as_system = false;
        result.unwrap_or_else(|e| panic!("FakeKube::apply refused: {}", e.message))
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let def = self.def_of(api_version, kind);
        lock(&self.shared.store)
            .objects
            .get(&obj_key(&def, ns, name))
            .cloned()
            .map(|o| with_type(o, &def))
    }

    /// Every stored object of a kind (in `ns`, or all), ordered by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let def = self.def_of(api_version, kind);
        lock(&self.shared.store)
            .objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                *g == def.group && *p == def.plural && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, o)| with_type(o.clone(), &def))
            .collect()
    }

    /// Deletes an object as a DELETE would (a `DELETED` event); false when it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> bool {
        let def = self.def_of(api_version, kind);
        lock(&self.shared.store)
            .delete(&self.shared.events, &def, ns, name, &Value::Null)
            .is_ok()
    }

    fn def_of(&self, api_version: &str, kind: &str) -> ResourceDef {
        let (group, version) = split_api_version(api_version);
        lock(&self.shared.store)
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
            .unwrap_or_else(|| {
                panic!("{api_version} {kind} is not registered (FakeKube::register)")
            })
    }

    /// The current global `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Forgets the whole watch history: a watch from any `resourceVersion` older than the
    /// current one gets `410 Expired`.
    pub fn compact(&self) {
        let mut store = lock(&self.shared.store);
        store.history.clear();
        store.compacted = store.rv;
    }

    /// How many watch events are kept (default 1000); older ones are forgotten.
    pub fn set_history_limit(&self, n: usize) {
        let mut store = lock(&self.shared.store);
        store.history_limit = n;
        store.trim();
    }

    /// The period of `BOOKMARK` events for watches that allow them (default 1 s), for new watches.
    pub fn set_bookmark_interval(&self, d: Duration) {
        *lock(&self.shared.bookmark_interval) = d;
    }

    /// From now on, requests to exactly `path` are accepted and never answered (`None`:
    /// answered again).
    pub fn hang_requests_to(&self, path: Option<&str>) {
        *lock(&self.shared.hang_path) = path.map(str::to_string);
    }

    /// Injects `fault` from now on (until [`Fault::None`]); open watches are not affected (see
    /// [`FakeKube::drop_watches`]).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
    }

    /// The next `n` writes (POST, PUT, PATCH, DELETE) to resources of `plural` answer
    /// `500 InternalError` (then writes work again).
    pub fn fail_next_writes(&self, plural: &str, n: u32) {
        *lock(&self.shared.failing_writes) = Some((plural.to_string(), n));
    }

    /// The next `n` successful writes (POST, PUT, PATCH, DELETE) to a path starting with
    /// `path_prefix` are applied, then answered `504 Timeout` (an answer lost on the way:
    /// the client cannot tell whether the write landed; kube's client retries a 504).
    pub fn lose_answers_to_next_writes(&self, path_prefix: &str, n: u32) {
        *lock(&self.shared.lost_answers) = Some((path_prefix.to_string(), n));
    }

    /// The next `n` `PATCH` or `PUT` requests to exactly `path` find the object changed just
    /// before by another writer (an annotation `fake.test/changed` set: a new
    /// `resourceVersion`), as a write racing the client's read-modify-write would.
    pub fn change_before_next_writes(&self, path: &str, n: u32) {
        *lock(&self.shared.changed_before) = Some((path.to_string(), n));
    }

    /// Whether `GET /.well-known/openid-configuration` answers `403` (as without the
    /// `system:service-account-issuer-discovery` grant) instead of the issuer.
    pub fn refuse_issuer_discovery(&self, refuse: bool) {
        self.shared
            .refuse_discovery
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends every open watch stream now (clean end of the HTTP body, as an API server restart
    /// or a load balancer would).
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|n| *n += 1);
    }

    /// How many watch streams are open.
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches.load(Ordering::SeqCst)
    }

    /// Every request so far (at most the last 50,000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Signs TokenRequest tokens: `sign` gets the claims (with `iss` = `issuer`) and returns
    /// the compact JWT.
    pub fn set_token_signer(
        &self,
        issuer: &str,
        sign: impl Fn(&Value) -> String + Send + Sync + 'static,
    ) {
        *lock(&self.shared.signer) = Some((issuer.to_string(), Arc::new(sign)));
    }

    /// Signs TokenRequest tokens with the test key `key` of `tests/fixtures/keys`
    /// (`rsa-1` is RS256) as `issuer`.
    pub fn sign_tokens_with_fixture(&self, issuer: &str, key: &'static str) {
        self.set_token_signer(issuer, move |claims| super::mint(key, claims, None));
    }

    /// Stops serving (connections are closed, new ones refused).
    pub fn stop(&self) {
        self.drop_watches();
        self.handle.shutdown();
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn random_token() -> String {
    format!("fake-{}", uuid::Uuid::new_v4().simple())
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

fn obj_key(def: &ResourceDef, ns: Option<&str>, name: &str) -> ObjKey {
    (
        def.group.clone(),
        def.plural.clone(),
        if def.namespaced {
            ns.unwrap_or_default().to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

fn with_type(mut obj: Value, def: &ResourceDef) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(def.api_version()));
        m.insert("kind".into(), Value::String(def.kind.clone()));
    }
    obj
}

fn now_rfc3339() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    super::now()
}

// ---------------------------------------------------------------------------------------------
// Errors: Kubernetes Status objects.

#[derive(Debug)]
struct KubeError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl KubeError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> KubeError {
        KubeError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> KubeError {
        self.details = Some(details);
        self
    }

    fn bad_request(message: impl Into<String>) -> KubeError {
        KubeError::new(400, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> KubeError {
        KubeError::new(422, "Invalid", message)
    }

    fn not_found(def: &ResourceDef, name: &str) -> KubeError {
        KubeError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        )
        .with_details(def.details(name))
    }

    fn conflict(def: &ResourceDef, name: &str) -> KubeError {
        KubeError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                def.qualified()
            ),
        )
        .with_details(def.details(name))
    }

    fn internal(message: impl Into<String>) -> KubeError {
        KubeError::new(500, "InternalError", message)
    }

    fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    fn response(&self) -> Response {
        json_response(self.code, &self.status())
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

type KResult<T> = Result<T, KubeError>;

// ---------------------------------------------------------------------------------------------
// The store: every write goes through here (API and test controls alike).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Main,
    Status,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> KResult<&mut Map<String, Value>> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| KubeError::bad_request("the body must be a JSON object"))?;
    match o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(m) => Ok(m),
        _ => Err(KubeError::bad_request("metadata must be an object")),
    }
}

/// The object without `metadata` and `status`: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

impl Store {
    fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    fn emit(&mut self, tx: &broadcast::Sender<Arc<Event>>, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        self.trim();
        // No receiver (no open watch) is not an error.
        let _ = tx.send(event);
    }

    /// Checks and fills `apiVersion`, `kind`, `metadata.namespace` of an incoming object.
    fn normalize(def: &ResourceDef, ns: Option<&str>, obj: &mut Value) -> KResult<()> {
        let o = obj
            .as_object_mut()
            .ok_or_else(|| KubeError::bad_request("the body must be a JSON object"))?;
        let av = def.api_version();
        match o.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != av => {
                return Err(KubeError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({av})"
                )));
            }
            _ => {}
        }
        match o.get("kind").and_then(Value::as_str) {
            Some(k) if k != def.kind => {
                return Err(KubeError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )));
            }
            _ => {}
        }
        o.insert("apiVersion".into(), Value::String(av));
        o.insert("kind".into(), Value::String(def.kind.clone()));
        let m = meta_mut(obj)?;
        if def.namespaced {
            let body_ns = m
                .get("namespace")
                .and_then(Value::as_str)
                .map(str::to_string);
            let ns = match (ns, body_ns.as_deref()) {
                (Some(u), Some(b)) if u != b => {
                    return Err(KubeError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => u.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => {
                    return Err(KubeError::bad_request(format!(
                        "{} is namespaced: a namespace is required",
                        def.qualified()
                    )));
                }
            };
            m.insert("namespace".into(), Value::String(ns));
        } else {
            m.remove("namespace");
        }
        Ok(())
    }

    fn create(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        apply_manager: Option<&str>,
    ) -> KResult<Value> {
        Self::normalize(def, ns, &mut obj)?;
        let rv = self.rv + 1;
        let m = meta_mut(&mut obj)?;
        let name = match m.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match m.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix = uuid::Uuid::new_v4().simple().to_string();
                    format!("{prefix}{}", &suffix[..5])
                }
                _ => {
                    return Err(KubeError::invalid(
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        if name.len() > 253 {
            return Err(KubeError::invalid(
                "metadata.name: longer than 253 characters",
            ));
        }
        m.insert("name".into(), Value::String(name.clone()));
        m.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        if !self.as_system {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        m.insert("generation".into(), json!(1));
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        if let Some(manager) = apply_manager {
            m.insert(
                "managedFields".into(),
                json!([managed_entry(def, manager, false)]),
            );
        }
        let ns_of = m
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        if def.has_status
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let key = obj_key(def, ns_of.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(KubeError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", def.qualified()),
            )
            .with_details(def.details(&name)));
        }
        self.next_rv();
        self.objects.insert(key, obj.clone());
        self.emit(
            tx,
            Event {
                rv,
                group: def.group.clone(),
                plural: def.plural.clone(),
                etype: EventType::Added,
                object: obj.clone(),
                prev: None,
            },
        );
        Ok(obj)
    }

    /// Replaces the main resource or the status of an existing object with `incoming`.
    /// A non-empty `metadata.resourceVersion` in `incoming` must be the current one (else 409).
    fn update(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut incoming: Value,
        part: Part,
    ) -> KResult<Value> {
        Self::normalize(def, ns, &mut incoming)?;
        match meta_str(&incoming, "name") {
            Some(n) if n != name => {
                return Err(KubeError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let key = obj_key(def, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| KubeError::not_found(def, name))?;
        let old_rv = meta_str(&old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        match meta_str(&incoming, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != old_rv => {
                return Err(KubeError::conflict(def, name));
            }
            _ => {}
        }
        let mut next = match part {
            Part::Main => {
                let mut n = incoming;
                if def.has_status
                    && let Some(o) = n.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                n
            }
            Part::Status => {
                // Only .status, and the field managers an apply to /status recorded.
                let mut n = old.clone();
                if let Some(o) = n.as_object_mut() {
                    match incoming.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                if let Some(fields) = incoming["metadata"].get("managedFields") {
                    meta_mut(&mut n)?.insert("managedFields".into(), fields.clone());
                }
                n
            }
        };
        // System metadata is the server's.
        let old_meta = old.get("metadata").cloned().unwrap_or_default();
        let generation = old_meta["generation"].as_u64().unwrap_or(1);
        let spec_changed = part == Part::Main && spec_part(&old) != spec_part(&next);
        {
            let m = meta_mut(&mut next)?;
            m.insert("name".into(), Value::String(name.to_string()));
            for k in ["uid", "creationTimestamp"] {
                if let Some(v) = old_meta.get(k) {
                    m.insert(k.into(), v.clone());
                }
            }
            // Set only by a DELETE (or a test control); clients can neither set nor clear it.
            if !self.as_system {
                for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                    match old_meta.get(k) {
                        Some(v) => m.insert(k.into(), v.clone()),
                        None => m.remove(k),
                    };
                }
            }
            if !m.contains_key("managedFields")
                && let Some(v) = old_meta.get("managedFields")
            {
                m.insert("managedFields".into(), v.clone());
            }
            m.insert(
                "generation".into(),
                json!(if spec_changed {
                    generation + 1
                } else {
                    generation
                }),
            );
            m.insert("resourceVersion".into(), Value::String(old_rv));
        }
        if next == old {
            return Ok(old);
        }
        let deleting = old_meta.get("deletionTimestamp").is_some() && !self.as_system;
        if deleting {
            let before = finalizers(&old);
            if let Some(added) = finalizers(&next).into_iter().find(|f| !before.contains(f)) {
                return Err(KubeError::invalid(format!(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{added}\"]"
                )));
            }
        }
        let rv = self.next_rv();
        meta_mut(&mut next)?.insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.objects.insert(key, next.clone());
        self.emit(
            tx,
            Event {
                rv,
                group: def.group.clone(),
                plural: def.plural.clone(),
                etype: EventType::Modified,
                object: next.clone(),
                prev: Some(old),
            },
        );
        if deleting && finalizers(&next).is_empty() {
            // The last finalizer is gone: the pending delete completes now.
            self.delete(tx, def, ns, name, &Value::Null)?;
        }
        Ok(next)
    }

    /// Applies a patch to an existing object (or creates one for server-side apply).
    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        content_type: &str,
        body: &[u8],
        part: Part,
        field_manager: Option<&str>,
    ) -> KResult<Value> {
        let key = obj_key(def, ns, name);
        let existing = self.objects.get(&key).cloned();
        let kind = content_type.split(';').next().unwrap_or_default().trim();
        let mut doc = match (&existing, kind) {
            (Some(o), _) => o.clone(),
            (None, "application/apply-patch+yaml") if part == Part::Main => Value::Null,
            (None, _) => return Err(KubeError::not_found(def, name)),
        };
        match kind {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| KubeError::bad_request(format!("invalid merge patch: {e}")))?;
                json_patch::merge(&mut doc, &p);
            }
            "application/json-patch+json" => {
                let p: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| KubeError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut doc, &p.0)
                    .map_err(|e| KubeError::invalid(format!("the JSON patch failed: {e}")))?;
            }
            "application/apply-patch+yaml" => {
                let manager = field_manager.filter(|m| !m.is_empty()).ok_or_else(|| {
                    KubeError::bad_request("fieldManager is required for apply patches")
                })?;
                let p: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => {
                        let text = std::str::from_utf8(body)
                            .map_err(|_| KubeError::bad_request("apply patch is not UTF-8"))?;
                        serde_saphyr::from_str(text).map_err(|e| {
                            KubeError::bad_request(format!("invalid apply patch: {e}"))
                        })?
                    }
                };
                if !p.is_object() {
                    return Err(KubeError::bad_request("an apply patch must be an object"));
                }
                if existing.is_none() {
                    let mut obj = p;
                    meta_mut(&mut obj)?.insert("name".into(), Value::String(name.to_string()));
                    return self.create(tx, def, ns, obj, Some(manager));
                }
                json_patch::merge(&mut doc, &p);
                let entry = managed_entry(def, manager, part == Part::Status);
                let m = meta_mut(&mut doc)?;
                let mut fields: Vec<Value> = m
                    .get("managedFields")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                fields.retain(|f| {
                    !(f["manager"] == entry["manager"]
                        && f["operation"] == "Apply"
                        && f.get("subresource") == entry.get("subresource"))
                });
                fields.push(entry);
                m.insert("managedFields".into(), Value::Array(fields));
            }
            other => {
                return Err(KubeError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format ({other})"),
                ));
            }
        }
        self.update(tx, def, ns, name, doc, part)
    }

    fn delete(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        options: &Value,
    ) -> KResult<Value> {
        let key = obj_key(def, ns, name);
        let old = self
            .objects
            .get(&key)
            .ok_or_else(|| KubeError::not_found(def, name))?;
        let pre = &options["preconditions"];
        if let Some(uid) = pre["uid"].as_str()
            && Some(uid) != meta_str(old, "uid")
        {
            return Err(KubeError::conflict(def, name));
        }
        if let Some(rv) = pre["resourceVersion"].as_str()
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(KubeError::conflict(def, name));
        }
        if !finalizers(old).is_empty() {
            // Deletion waits for the finalizers' controllers: only mark the object.
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old.clone());
            }
            let old = old.clone();
            let mut next = old.clone();
            let rv = self.next_rv();
            {
                let m = meta_mut(&mut next)?;
                m.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                m.insert("resourceVersion".into(), Value::String(rv.to_string()));
            }
            self.objects.insert(key, next.clone());
            self.emit(
                tx,
                Event {
                    rv,
                    group: def.group.clone(),
                    plural: def.plural.clone(),
                    etype: EventType::Modified,
                    object: next.clone(),
                    prev: Some(old),
                },
            );
            return Ok(next);
        }
        let mut obj = self.objects.remove(&key).unwrap_or_default();
        let rv = self.next_rv();
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        meta_mut(&mut obj)?.insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.emit(
            tx,
            Event {
                rv,
                group: def.group.clone(),
                plural: def.plural.clone(),
                etype: EventType::Deleted,
                object: obj,
                prev: None,
            },
        );
        self.collect_dependents(tx, &uid);
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": { "name": name, "group": def.group, "kind": def.plural, "uid": uid },
        }))
    }
}

impl Store {
    /// Background garbage collection: deletes every object that names `uid` among its
    /// `ownerReferences` (each in turn collects its own dependents).
    fn collect_dependents(&mut self, tx: &broadcast::Sender<Arc<Event>>, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let dependents: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (group, plural, ns, name) in dependents {
            let Some(def) = self
                .resources
                .iter()
                .find(|r| r.group == group && r.plural == plural)
                .cloned()
            else {
                continue;
            };
            let ns = (!ns.is_empty()).then_some(ns);
            // Already gone (collected through another owner) is fine.
            let _ = self.delete(tx, &def, ns.as_deref(), &name, &Value::Null);
        }
    }
}

/// `metadata.finalizers` of an object.
fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn managed_entry(def: &ResourceDef, manager: &str, status: bool) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": def.api_version(),
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if status {
        e["subresource"] = json!("status");
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Selectors.

#[derive(Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse_label_selector(s: &str) -> KResult<Vec<LabelReq>> {
    let bad = |t: &str| KubeError::bad_request(format!("unable to parse requirement: {t:?}"));
    let mut reqs = Vec::new();
    for term in split_top_level(s) {
        let req = if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, set)) = term.split_once(" notin ") {
            LabelReq::NotIn(k.trim().into(), parse_set(set).ok_or_else(|| bad(&term))?)
        } else if let Some((k, set)) = term.split_once(" in ") {
            LabelReq::In(k.trim().into(), parse_set(set).ok_or_else(|| bad(&term))?)
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else {
            LabelReq::Exists(term.clone())
        };
        let key = match &req {
            LabelReq::Eq(k, _)
            | LabelReq::Ne(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad(&term));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
        LabelReq::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
        LabelReq::NotIn(k, set) => get(k).is_none_or(|v| !set.iter().any(|s| s == v)),
    })
}

/// (field, value, equal)
type FieldReq = (String, String, bool);

fn parse_field_selector(s: &str) -> KResult<Vec<FieldReq>> {
    let mut reqs = Vec::new();
    for term in split_top_level(s) {
        let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, true)
        } else {
            return Err(KubeError::bad_request(format!(
                "invalid field selector: {term:?}"
            )));
        };
        let k = k.trim();
        if k != "metadata.name" && k != "metadata.namespace" {
            return Err(KubeError::bad_request(format!(
                "field label not supported: {k} (the fake knows metadata.name and metadata.namespace)"
            )));
        }
        reqs.push((k.to_string(), v.trim().to_string(), eq));
    }
    Ok(reqs)
}

fn fields_match(reqs: &[FieldReq], obj: &Value) -> bool {
    reqs.iter().all(|(k, v, eq)| {
        let field = if k == "metadata.name" {
            "name"
        } else {
            "namespace"
        };
        let actual = meta_str(obj, field).unwrap_or_default();
        (actual == v) == *eq
    })
}

/// What a list or watch selects.
struct Selection {
    def: ResourceDef,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selection {
    fn of_kind(&self, group: &str, plural: &str) -> bool {
        group == self.def.group && plural == self.def.plural
    }

    fn matches(&self, obj: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| meta_str(obj, "namespace") == Some(ns))
            && labels_match(&self.labels, obj)
            && fields_match(&self.fields, obj)
    }

    /// The watch line for `event`, if this selection sees it.
    fn line(&self, event: &Event) -> Option<Bytes> {
        if !self.of_kind(&event.group, &event.plural) {
            return None;
        }
        let now = self.matches(&event.object);
        let etype = match event.etype {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now => "DELETED",
            EventType::Modified => {
                let before = event.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
            _ => return None,
        };
        Some(event_line(
            etype,
            with_type(event.object.clone(), &self.def),
        ))
    }
}

fn event_line(etype: &str, object: Value) -> Bytes {
    let mut s = json!({ "type": etype, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark_line(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        json!({ "apiVersion": def.api_version(), "kind": def.kind, "metadata": meta }),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP.

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = header(&headers, "authorization")
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let user = token.and_then(|t| {
        lock(&shared.users)
            .iter()
            .find(|(_, tok)| *tok == t)
            .map(|(u, _)| u.clone())
    });
    let content_type = header(&headers, "content-type");
    let hang = lock(&shared.hang_path).as_deref() == Some(uri.path());
    if hang {
        std::future::pending::<()>().await;
    }
    if user.is_some() && (method == Method::PATCH || method == Method::PUT) {
        let change = {
            let mut changed = lock(&shared.changed_before);
            match changed.as_mut() {
                Some((p, n)) if *n > 0 && p == uri.path() => {
                    *n -= 1;
                    Some(*n)
                }
                _ => None,
            }
        };
        if let Some(n) = change {
            let patch = json!({"metadata": {"annotations": {"fake.test/changed": n.to_string()}}});
            let _ = route(
                &shared,
                &Method::PATCH,
                uri.path(),
                &Query::parse(None),
                Some("application/merge-patch+json"),
                &serde_json::to_vec(&patch).unwrap_or_default(),
            );
        }
    }
    let response = if user.is_none() {
        KubeError::new(401, "Unauthorized", "Unauthorized").response()
    } else {
        route(
            &shared,
            &method,
            uri.path(),
            &Query::parse(uri.query()),
            content_type.as_deref(),
            &body,
        )
        .unwrap_or_else(|e| e.response())
    };
    let mut response = response;
    if method != Method::GET && response.status().is_success() {
        let mut lost = lock(&shared.lost_answers);
        if let Some((prefix, n)) = lost.as_mut()
            && *n > 0
            && uri.path().starts_with(prefix.as_str())
        {
            *n -= 1;
            response = KubeError::new(
                504,
                "Timeout",
                "injected fault: the write was applied, its answer lost (FakeKube::lose_answers_to_next_writes)",
            )
            .response();
        }
    }
    let mut log = lock(&shared.requests);
    if log.len() >= MAX_REQUEST_LOG {
        log.pop_front();
    }
    log.push_back(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        content_type,
        user_agent: header(&headers, "user-agent"),
        user,
        status: response.status().as_u16(),
    });
    response
}

/// A resource path: `{prefix}/[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`.
struct Target {
    def: ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(store: &Store, path: &str) -> KResult<Option<Target>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let not_found = || {
        KubeError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if store.find(group, version, plural).is_some() => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let def = store.find(group, version, rest[0]).ok_or_else(not_found)?;
    if rest.len() > 3 || (ns.is_some() && !def.namespaced) {
        return Err(not_found());
    }
    Ok(Some(Target {
        def,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    }))
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    q: &Query,
    content_type: Option<&str>,
    body: &[u8],
) -> KResult<Response> {
    if path == "/.well-known/openid-configuration" && *method == Method::GET {
        if shared
            .refuse_discovery
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(KubeError::new(
                403,
                "Forbidden",
                "forbidden: cannot get path \"/.well-known/openid-configuration\"",
            ));
        }
        let issuer = lock(&shared.signer)
            .as_ref()
            .map(|(i, _)| i.clone())
            .unwrap_or_else(|| DEFAULT_ISSUER.to_string());
        return Ok(json_response(
            200,
            &json!({"issuer": issuer, "jwks_uri": format!("{issuer}/openid/v1/jwks")}),
        ));
    }
    if let Some(doc) = discovery(&lock(&shared.store), path) {
        return Ok(json_response(200, &doc?));
    }
    if q.get("dryRun").is_some() {
        return Err(KubeError::bad_request(
            "dryRun is not supported by the fake",
        ));
    }
    let target = parse_target(&lock(&shared.store), path)?.ok_or_else(|| {
        KubeError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    })?;
    let fault = *lock(&shared.fault);
    let Target { def, ns, name, sub } = target;
    if *method != Method::GET {
        let mut failing = lock(&shared.failing_writes);
        if let Some((plural, n)) = failing.as_mut()
            && *plural == def.plural
            && *n > 0
        {
            *n -= 1;
            return Err(KubeError::internal(
                "injected fault: this write is refused (FakeKube::fail_next_writes)",
            ));
        }
    }
    let fault = match fault {
        Fault::RefuseReadsOf(plural) if plural == def.plural => Fault::RefuseReads,
        Fault::RefuseReadsOf(_) => Fault::None,
        other => other,
    };
    let tx = &shared.events;
    let method_not_allowed = || {
        KubeError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )
    };
    let read_refused =
        || KubeError::internal("injected fault: reads are refused (FakeKube::set_fault)");
    match (name.as_deref(), sub.as_deref()) {
        (None, _) => match *method {
            Method::GET if q.flag("watch") => {
                if fault == Fault::RefuseReads || fault == Fault::RefuseWatches {
                    return Err(KubeError::internal(
                        "injected fault: watches are refused (FakeKube::set_fault)",
                    ));
                }
                serve_watch(shared.clone(), def, ns, q, fault == Fault::GoneWatches)
            }
            Method::GET => {
                if fault == Fault::RefuseReads {
                    return Err(read_refused());
                }
                let sel = selection(def, ns, q)?;
                let store = lock(&shared.store);
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|((g, p, _, _), o)| sel.of_kind(g, p) && sel.matches(o))
                    .map(|(_, o)| with_type(o.clone(), &sel.def))
                    .collect();
                Ok(json_response(
                    200,
                    &json!({
                        "apiVersion": sel.def.api_version(),
                        "kind": format!("{}List", sel.def.kind),
                        "metadata": { "resourceVersion": store.rv.to_string() },
                        "items": items,
                    }),
                ))
            }
            Method::POST => {
                let obj = parse_body(body)?;
                let created = lock(&shared.store).create(tx, &def, ns.as_deref(), obj, None)?;
                Ok(json_response(201, &created))
            }
            _ => Err(method_not_allowed()),
        },
        (Some(name), None) => match *method {
            Method::GET => {
                if fault == Fault::RefuseReads {
                    return Err(read_refused());
                }
                get_object(shared, &def, ns.as_deref(), name)
            }
            Method::PUT => {
                let obj = parse_body(body)?;
                let updated =
                    lock(&shared.store).update(tx, &def, ns.as_deref(), name, obj, Part::Main)?;
                Ok(json_response(200, &updated))
            }
            Method::PATCH => {
                let patched = lock(&shared.store).patch(
                    tx,
                    &def,
                    ns.as_deref(),
                    name,
                    content_type.unwrap_or_default(),
                    body,
                    Part::Main,
                    q.get("fieldManager"),
                )?;
                Ok(json_response(200, &patched))
            }
            Method::DELETE => {
                let options = if body.is_empty() {
                    Value::Null
                } else {
                    parse_body(body)?
                };
                let status = lock(&shared.store).delete(tx, &def, ns.as_deref(), name, &options)?;
                Ok(json_response(200, &status))
            }
            _ => Err(method_not_allowed()),
        },
        (Some(name), Some("status")) if def.has_status => match *method {
            Method::GET => {
                if fault == Fault::RefuseReads {
                    return Err(read_refused());
                }
                get_object(shared, &def, ns.as_deref(), name)
            }
            Method::PUT => {
                let obj = parse_body(body)?;
                let updated =
                    lock(&shared.store).update(tx, &def, ns.as_deref(), name, obj, Part::Status)?;
                Ok(json_response(200, &updated))
            }
            Method::PATCH => {
                let patched = lock(&shared.store).patch(
                    tx,
                    &def,
                    ns.as_deref(),
                    name,
                    content_type.unwrap_or_default(),
                    body,
                    Part::Status,
                    q.get("fieldManager"),
                )?;
                Ok(json_response(200, &patched))
            }
            _ => Err(method_not_allowed()),
        },
        (Some(name), Some("token"))
            if def.group.is_empty()
                && def.plural == "serviceaccounts"
                && *method == Method::POST =>
        {
            token_request(shared, &def, ns.as_deref(), name, body)
        }
        _ => Err(KubeError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )),
    }
}

fn parse_body(body: &[u8]) -> KResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| KubeError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn get_object(
    shared: &Shared,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> KResult<Response> {
    let store = lock(&shared.store);
    let obj = store
        .objects
        .get(&obj_key(def, ns, name))
        .ok_or_else(|| KubeError::not_found(def, name))?;
    Ok(json_response(200, &with_type(obj.clone(), def)))
}

fn selection(def: ResourceDef, ns: Option<String>, q: &Query) -> KResult<Selection> {
    Ok(Selection {
        def,
        ns,
        labels: parse_label_selector(q.get("labelSelector").unwrap_or_default())?,
        fields: parse_field_selector(q.get("fieldSelector").unwrap_or_default())?,
    })
}

fn serve_watch(
    shared: Arc<Shared>,
    def: ResourceDef,
    ns: Option<String>,
    q: &Query,
    gone_fault: bool,
) -> KResult<Response> {
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    if send_initial && !bookmarks {
        return Err(KubeError::invalid(
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Some(Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| KubeError::bad_request(format!("invalid timeoutSeconds {s:?}")))?
                .min(MAX_WATCH_TIMEOUT_SECS),
        )),
        None => None,
    };
    let sel = selection(def, ns, q)?;
    let from = match q.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| KubeError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let mut first: Vec<Bytes> = Vec::new();
    let mut gone = false;
    let (rx, start_rv) = {
        let store = lock(&shared.store);
        // Subscribed under the store lock: no event falls between the backlog and the live stream.
        let rx = shared.events.subscribe();
        match from {
            _ if gone_fault => {
                gone = true;
                first.push(gone_line(from.unwrap_or(0), store.rv));
            }
            Some(n) if n < store.compacted => {
                gone = true;
                first.push(gone_line(n, store.compacted));
            }
            Some(n) => {
                for e in store.history.iter().filter(|e| e.rv > n) {
                    first.extend(sel.line(e));
                }
            }
            None => {
                for ((g, p, _, _), o) in &store.objects {
                    if sel.of_kind(g, p) && sel.matches(o) {
                        first.push(event_line("ADDED", with_type(o.clone(), &sel.def)));
                    }
                }
                if send_initial {
                    first.push(bookmark_line(&sel.def, store.rv, true));
                }
            }
        }
        (rx, store.rv)
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let interval = *lock(&shared.bookmark_interval);
    let drop_rx = shared.drop_watches.subscribe();
    tokio::spawn(watch_task(
        shared, sel, first, rx, drop_rx, tx, start_rv, bookmarks, interval, timeout, gone,
    ));
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .map_err(|e| KubeError::internal(e.to_string()))
}

fn gone_line(asked: u64, oldest: u64) -> Bytes {
    let status = KubeError::new(
        410,
        "Expired",
        format!("too old resource version: {asked} ({oldest})"),
    )
    .status();
    event_line("ERROR", status)
}

struct WatchCount(Arc<Shared>);

impl Drop for WatchCount {
    fn drop(&mut self) {
        self.0.active_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_task(
    shared: Arc<Shared>,
    sel: Selection,
    first: Vec<Bytes>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    mut drop_rx: watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
    start_rv: u64,
    bookmarks: bool,
    interval: Duration,
    timeout: Option<Duration>,
    ends_now: bool,
) {
    shared.active_watches.fetch_add(1, Ordering::SeqCst);
    let _count = WatchCount(shared.clone());
    for line in first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if ends_now {
        return;
    }
    let mut seen = start_rv;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if ev.rv <= seen {
                        continue;
                    }
                    seen = ev.rv;
                    if let Some(line) = sel.line(&ev)
                        && tx.send(line).await.is_err()
                    {
                        return;
                    }
                }
                // Lagged: this watch missed events; end it (the client resumes from its last
                // resourceVersion, or re-lists on 410). Closed: the fake stopped.
                Err(_) => return,
            },
            _ = ticks.tick(), if bookmarks => {
                if tx.send(bookmark_line(&sel.def, seen, false)).await.is_err() {
                    return;
                }
            }
            _ = until_deadline => return,
            _ = drop_rx.changed() => return,
            _ = tx.closed() => return,
        }
    }
}

fn token_request(
    shared: &Shared,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
) -> KResult<Response> {
    let ns = ns.ok_or_else(|| KubeError::bad_request("a namespace is required"))?;
    let sa_uid = {
        let store = lock(&shared.store);
        let sa = store
            .objects
            .get(&obj_key(def, Some(ns), name))
            .ok_or_else(|| KubeError::not_found(def, name))?;
        meta_str(sa, "uid").unwrap_or_default().to_string()
    };
    let req = parse_body(body)?;
    let (issuer, signer) = lock(&shared.signer)
        .clone()
        .ok_or_else(|| KubeError::internal("no token signer (FakeKube::set_token_signer)"))?;
    let exp_secs = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    if exp_secs < 600 {
        return Err(KubeError::invalid(
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    if exp_secs > 1 << 32 {
        return Err(KubeError::invalid(
            "spec.expirationSeconds: Invalid value: may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<Value> = match req["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.clone(),
        _ => vec![Value::String(issuer.clone())],
    };
    let now = unix_now();
    let exp = now + exp_secs as u64;
    let claims = json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": { "name": name, "uid": sa_uid },
        },
    });
    let token = signer(&claims);
    let expiration = time::OffsetDateTime::from_unix_timestamp(exp as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Ok(json_response(
        201,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": { "name": name, "namespace": ns, "creationTimestamp": null },
            "spec": {
                "audiences": claims["aud"],
                "expirationSeconds": exp_secs,
                "boundObjectRef": req["spec"]["boundObjectRef"],
            },
            "status": { "token": token, "expirationTimestamp": expiration },
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Discovery.

fn discovery(store: &Store, path: &str) -> Option<KResult<Value>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let groups = || {
        let mut gs: Vec<(String, Vec<String>)> = Vec::new();
        for r in store.resources.iter().filter(|r| !r.group.is_empty()) {
            match gs.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version.clone()),
                Some(_) => {}
                None => gs.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        gs
    };
    let group_doc = |g: &str, vs: &[String]| {
        json!({
            "name": g,
            "versions": vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
            "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]},
        })
    };
    let doc = match segs.as_slice() {
        ["version"] => Ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64",
        })),
        ["api"] => Ok(json!({
            "kind": "APIVersions",
            "apiVersion": "v1",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        ["apis"] => Ok(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().iter().map(|(g, vs)| group_doc(g, vs)).collect::<Vec<_>>(),
        })),
        ["apis", g] => match groups().into_iter().find(|(name, _)| name == g) {
            Some((name, vs)) => {
                let mut d = group_doc(&name, &vs);
                d["kind"] = json!("APIGroup");
                d["apiVersion"] = json!("v1");
                Ok(d)
            }
            None => Err(KubeError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )),
        },
        ["api", v] => Ok(resource_list(store, "", v)),
        ["apis", g, v] => {
            if store
                .resources
                .iter()
                .any(|r| r.group == *g && r.version == *v)
            {
                Ok(resource_list(store, g, v))
            } else {
                Err(KubeError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({path})"),
                ))
            }
        }
        _ => return None,
    };
    Some(doc)
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.group.is_empty() && r.plural == "serviceaccounts" {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
        "resources": resources,
    })
}
