//! HTTP: the ESE calls, the `/v1` extension calls, health and metrics.
//!
//! Every secret call takes the same path: bearer token present → body parsed →
//! token verified (`authn`) → decision (`authz`) → backend (`providers`/`generators`)
//! with a timeout → answer. A denied call and a missing object both answer 404.

mod credentials;
mod error;
pub mod limits;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use zeroize::Zeroizing;

pub use error::{ApiError, ErrorStyle, render_errors};
pub use limits::{LimitSettings, Limits};

use crate::authn::{Authenticator, AuthnError, ClientCertificate, Identity};
use crate::authz::{Action, Resource};
use crate::config::Snapshot;
use crate::generators::{self, Generator};
use crate::ledger::{GeneratorRef, Holder, Ledger, Owner, lifecycle};
use crate::metrics::METRICS;
use crate::providers::{CacheAge, FindRequest, RemoteRef, SecretProvider};

/// Settings of the HTTP layer (its abuse limits are in [`LimitSettings`]).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Upper bound on any one backend call, on top of the backend's own timeout.
    pub backend_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            backend_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The current configuration snapshot, swapped atomically on reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Token verification with its key and token caches.
    pub authenticator: Arc<Authenticator>,
    /// Limits.
    pub settings: ApiSettings,
    /// Rate limiters and the in-flight cap (shared by every request).
    pub limits: Arc<Limits>,
    /// Where issued revocable credentials are recorded. Without one, generators that
    /// issue revocable credentials answer 503 (nothing unaccounted is handed out).
    pub ledger: Option<Arc<dyn Ledger>>,
}

/// Builds the router. With `with_metrics`, `/metrics` is served here too.
///
/// Two families, each with its own error style and the same abuse limits: the ESE calls
/// (errors as a JSON string, as ESE answers them; also health, metrics and unknown paths)
/// and the `/v1` extension calls (RFC 9457 problem details).
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut ese = Router::new()
        .route("/secretstore/{store}/secrets/{*name}", post(ese_get_secret))
        .route("/generators/{namespace}/revoke", post(ese_revoke_states))
        .route(
            "/generators/{namespace}/{kind}/{name}",
            post(ese_generate).delete(ese_revoke_own),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        ese = ese.route("/metrics", get(metrics));
    }
    let v1 = Router::new()
        .route("/v1/secretstore/{store}/get", post(v1_get))
        .route("/v1/secretstore/{store}/extract", post(v1_extract))
        .route("/v1/secretstore/{store}/find", post(v1_find))
        .route(
            "/v1/generators/{namespace}/{kind}/{name}",
            post(credentials::v1_generate),
        )
        .route("/v1/credentials/{id}/renew", post(credentials::v1_renew))
        .route(
            "/v1/credentials/{id}",
            axum::routing::delete(credentials::v1_revoke),
        );
    // `limits::guard` reads the body within this limit; the extractor limit only restates it.
    let limit = state.limits.settings.max_body_bytes;
    ese.merge(v1)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.limits.clone(), front))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The way in of every call, as one layer: the request span and metrics ([`observe`]), the
/// error style of the call's family ([`render_errors`]: problem+json for a `/v1` route,
/// ESE's JSON string for the ESE calls, health, metrics and unknown paths), then the abuse
/// limits ([`limits::guard`]). One layer rather than three: axum wraps every route in each
/// layer, and each costs a boxed service clone and a boxed future per request.
async fn front(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let style = match req.extensions().get::<MatchedPath>() {
        Some(route) if route.as_str().starts_with("/v1/") => ErrorStyle::Problem,
        _ => ErrorStyle::Ese,
    };
    observe(req, |req| {
        render_errors(style, req, |req| {
            limits::guard(&limits, req, |req| next.run(req))
        })
    })
    .await
}

/// A router with only `/metrics`, for a separate metrics listener.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.snapshot.load().generation > 0 {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "configuration not loaded").into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Target of the per-request access line (`answered`, with status and elapsed µs), logged
/// at `debug`.
pub const ACCESS_TARGET: &str = "esi::access";

/// Request metrics and a request id span around every call.
async fn observe<F, Fut>(req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    // The route template (shared text, no copy), never the path the caller sent.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    // A request id must be unique, not secret: a version-4 UUID from the thread's CSPRNG
    // (rand's ThreadRng, seeded by the OS), not a getrandom system call per request.
    let request_id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    // The id every log and audit line of this request carries, for the caller to quote;
    // span fields as text, so no layer formats them again.
    let mut id_buffer = uuid::Uuid::encode_buffer();
    let id_text: &str = request_id.hyphenated().encode_lower(&mut id_buffer);
    let span = tracing::info_span!(
        "request",
        request_id = id_text,
        method = req.method().as_str(),
        route
    );
    let start = Instant::now();
    let mut resp = next(req).instrument(span.clone()).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(id_text) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status();
    METRICS
        .http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    METRICS
        .http_latency
        .with_label_values(&[route])
        .observe(start.elapsed().as_secs_f64());
    // The access line is `debug` (target `esi::access`; `RUST_LOG=info,esi::access=debug`
    // turns it on): at `info` every request already leaves its decision in the audit log, a
    // refusal its `refused` line and every request its metrics, and a third line per request
    // was a tenth of the server's CPU per request (issue 15).
    if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::DEBUG) {
        span.in_scope(|| {
            tracing::debug!(
                target: ACCESS_TARGET,
                status = status.as_u16(),
                elapsed_us = start.elapsed().as_micros() as u64,
                "answered"
            )
        });
    }
    resp
}

/// Bodies carry the client cluster's CA as `ca.crt`.
trait ClientCa {
    fn ca_crt(&self) -> Option<&str>;
}

macro_rules! body_with_ca {
    ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Deserialize)]
        struct $name {
            #[serde(rename = "ca.crt", default)]
            ca_crt: Option<String>,
            $($(#[$fm])* $field: $ty),*
        }
        impl ClientCa for $name {
            fn ca_crt(&self) -> Option<&str> {
                self.ca_crt.as_deref().filter(|s| !s.is_empty())
            }
        }
    };
}

body_with_ca!(
    /// ESE calls: only `ca.crt`.
    struct EseBody {}
);

#[derive(Debug, Deserialize)]
struct RemoteRefBody {
    key: String,
    #[serde(default)]
    property: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

body_with_ca!(
    /// `/v1/.../get` and `/extract`.
    struct RemoteRefRequest {
        #[serde(rename = "remoteRef", default)]
        remote_ref: Option<RemoteRefBody>,
    }
);

#[derive(Debug, Default, Deserialize)]
struct NameMatcher {
    #[serde(default)]
    regexp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FindBody {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    name: Option<NameMatcher>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

body_with_ca!(
    /// `/v1/.../find`.
    struct FindRequestBody {
        #[serde(default)]
        find: Option<FindBody>,
    }
);

body_with_ca!(
    /// ESE `POST /generators/{ns}/revoke`.
    struct RevokeStatesBody {
        #[serde(default)]
        owner: String,
        #[serde(default)]
        namespace: String,
    }
);

/// The authenticated caller: the bearer token's identity and, when an `x-workload-token`
/// was sent (a federation client acting for a workload), that workload's identity — both
/// verified once, by [`Admitted`].
struct Caller {
    identity: Arc<Identity>,
    workload: Option<Arc<Identity>>,
    /// The TCP peer of the HTTPS connection (the listener's `ConnectInfo`; never a
    /// forwarding header), IPv4-mapped IPv6 addresses as IPv4: Cedar's
    /// `context.sourceAddress`. `None` when the connection did not record it.
    source_address: Option<std::net::IpAddr>,
}

impl Caller {
    /// The Cedar request context of a decision made now for this caller.
    fn context(&self) -> crate::authz::RequestContext {
        crate::authz::RequestContext::now(self.source_address)
    }
}

/// An admitted request: its verified [`Caller`] and its parsed JSON body (empty → default).
/// Rejections are [`ApiError`]s, rendered in the style of the router that serves the route.
struct Admitted<B> {
    caller: Caller,
    body: B,
}

impl<B> axum::extract::FromRequest<AppState> for Admitted<B>
where
    B: DeserializeOwned + Default + ClientCa + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        // `limits::guard` has read the body within its limit and deadline already.
        let bytes = axum::body::to_bytes(body, state.limits.settings.max_body_bytes).await;
        let client_cert = parts.extensions.get::<Arc<ClientCertificate>>();
        let (mut caller, body) = admit(state, &parts.headers, client_cert, bytes).await?;
        caller.source_address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|axum::extract::ConnectInfo(peer)| peer.ip().to_canonical());
        Ok(Admitted { caller, body })
    }
}

fn bearer_token<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    if name == header::AUTHORIZATION.as_str() {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
            .filter(|t| !t.is_empty())
    } else {
        Some(value).filter(|t| !t.is_empty())
    }
}

/// What authenticates a request ([`credential`]).
enum Credential<'r> {
    /// `Authorization: Bearer` (a JWT).
    Bearer(&'r str),
    /// A TLS client certificate presented as an X.509-SVID.
    Svid(&'r ClientCertificate),
}

/// The request's one credential (docs/identities.md, "Precedence"): a client certificate
/// that is an X.509-SVID attempt ([`ClientCertificate::is_svid`]) or the bearer token —
/// both at once is refused (401, [`AuthnError::TwoCredentials`]), never guessed. A client
/// certificate that is no X.509-SVID (no `spiffe` URI SAN) is no credential here: the bearer
/// token authenticates as if it had not been sent.
///
/// # Errors
/// 401: both, or neither.
fn credential<'r>(
    headers: &'r HeaderMap,
    cert: Option<&'r Arc<ClientCertificate>>,
) -> Result<Credential<'r>, ApiError> {
    let bearer = bearer_token(headers, header::AUTHORIZATION.as_str());
    match (cert.filter(|c| c.is_svid()), bearer) {
        (Some(_), Some(_)) => Err(AuthnError::TwoCredentials.into()),
        (Some(cert), None) => Ok(Credential::Svid(cert)),
        (None, Some(token)) => Ok(Credential::Bearer(token)),
        (None, None) if cert.is_some() => Err(ApiError::Unauthorized(
            "missing bearer token (the client certificate is not an X.509-SVID: no spiffe URI SAN)"
                .into(),
        )),
        (None, None) => Err(ApiError::Unauthorized("missing bearer token".into())),
    }
}

/// Credential present → body parsed → credential (and `x-workload-token`) verified.
async fn admit<B: DeserializeOwned + Default + ClientCa>(
    state: &AppState,
    headers: &HeaderMap,
    client_cert: Option<&Arc<ClientCertificate>>,
    body: Result<Bytes, axum::Error>,
) -> Result<(Caller, B), ApiError> {
    let credential = credential(headers, client_cert)?;
    let max_token_bytes = state.limits.settings.max_token_bytes;
    if let Credential::Bearer(token) = credential
        && token.len() > max_token_bytes
    {
        return Err(ApiError::TooLarge);
    }
    let body = body.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest("cannot read request body".into())
        }
    })?;
    let parsed: B = if body.iter().all(u8::is_ascii_whitespace) {
        B::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            // serde_json's message names the position and expectation, never the content.
            ApiError::BadRequest(format!("invalid JSON body: {e}"))
        })?
    };
    let identity = match credential {
        Credential::Bearer(token) => {
            state
                .authenticator
                .authenticate_shared(token, parsed.ca_crt())
                .await?
        }
        Credential::Svid(cert) => state.authenticator.authenticate_x509(cert).await?,
    };
    let mut workload = None;
    if let Some(workload_token) = bearer_token(headers, "x-workload-token") {
        if workload_token.len() > max_token_bytes {
            return Err(ApiError::TooLarge);
        }
        let verified = state
            .authenticator
            .authenticate_shared(workload_token, parsed.ca_crt())
            .await
            .map_err(|e| ApiError::Unauthorized(format!("x-workload-token: {e}")))?;
        // A workload token only means something within the caller's own federation.
        if verified.federation != identity.federation {
            return Err(ApiError::Unauthorized(
                "x-workload-token is not from the caller's federation".into(),
            ));
        }
        let pod = verified
            .service_account()
            .and_then(|sa| sa.pod_name.as_deref())
            .unwrap_or("");
        tracing::info!(workload = %verified.subject, pod, "workload token verified");
        workload = Some(verified);
    }
    // Debug only: the decision line (target `esi::decision`) names the same caller.
    tracing::debug!(federation = %identity.federation, subject = %identity.subject, "authenticated");
    state
        .limits
        .check_identity(&identity.federation, &identity.subject)?;
    Ok((
        Caller {
            identity,
            workload,
            source_address: None,
        },
        parsed,
    ))
}

/// The decision on `resource`, answered only once its audit line is written: 503
/// ([`ApiError::AuditUnavailable`]) when it could not be, 404 when denied.
async fn authorize(
    snapshot: &Snapshot,
    caller: &Caller,
    action: Action,
    resource: &Resource,
) -> Result<(), ApiError> {
    let (decision, receipts) = crate::audit::collect(|| {
        snapshot
            .policies
            .decide_in(&caller.identity, action, resource, &caller.context())
    });
    let allowed = decision.allowed;
    if !receipts.written().await {
        return Err(ApiError::AuditUnavailable);
    }
    if allowed {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

async fn with_timeout<T, E: Into<ApiError>>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ApiError::Unavailable("backend timed out".into())),
    }
}

/// What the server decides for a `get` of `remote` on `store` ([`key_target`]).
pub struct KeyTarget {
    /// The resource decided: the store's canonical form of the key, or the key as written
    /// when it has none (or the store is unknown).
    pub resource: Resource,
    /// The store, when it exists.
    pub provider: Option<Arc<dyn SecretProvider>>,
    /// The canonical reference, or why there is none (the request then fails after the
    /// decision: 404 for an unknown store, 400 for a spelling with no canonical form).
    pub canonical: Result<RemoteRef, ApiError>,
}

/// The `get` decision's resource for `remote` on `store`, as every `get` (and
/// `esi-server policy explain`) computes it: one canonical form per backend object.
pub fn key_target(snapshot: &Snapshot, store: &str, remote: &RemoteRef) -> KeyTarget {
    let provider = snapshot.stores.get(store).cloned();
    let canonical = match &provider {
        Some(p) => p.canonical_ref(remote).map_err(ApiError::from),
        None => Err(ApiError::NotFound),
    };
    let decided_key = match &canonical {
        Ok(c) => c.key.clone(),
        Err(_) => remote.key.clone(),
    };
    KeyTarget {
        resource: Resource::RemoteKey {
            store: store.to_string(),
            key: decided_key,
        },
        provider,
        canonical,
    }
}

/// The store and the canonical form of `remote` on it, after the `get` decision on
/// exactly that form (see `SecretProvider::canonical_ref`): the decision, its audit line
/// and the backend call all name the same object. A spelling with no canonical form (or
/// an unknown store) is decided as written, so a caller without a grant gets 404 and
/// learns nothing about the store, and is then refused.
async fn decide_key(
    snapshot: &Snapshot,
    caller: &Caller,
    store: &str,
    remote: &RemoteRef,
) -> Result<(Arc<dyn SecretProvider>, RemoteRef), ApiError> {
    let target = key_target(snapshot, store, remote);
    authorize(snapshot, caller, Action::Get, &target.resource).await?;
    match (target.provider, target.canonical) {
        (Some(p), Ok(c)) => Ok((p, c)),
        (_, Err(e)) => Err(e),
        (None, Ok(_)) => Err(ApiError::NotFound),
    }
}

/// Reads `remote` from `store` for `caller` after a `get` decision on its canonical form;
/// with the value's age when the store's cache answered.
async fn read_secret(
    state: &AppState,
    snapshot: &Snapshot,
    caller: &Caller,
    store: &str,
    remote: &RemoteRef,
) -> Result<(Zeroizing<Vec<u8>>, Option<CacheAge>), ApiError> {
    let (provider, canonical) = decide_key(snapshot, caller, store, remote).await?;
    with_timeout(
        state.settings.backend_timeout,
        provider.get_secret_with_age(&canonical),
    )
    .await
    .map(|(v, age)| (Zeroizing::new(v), age))
}

/// An RFC 9111 `Age` header (whole seconds) on an answer served from a store's cache, and
/// for a value served stale while the backend is down (`staleIfError`, RFC 5861) the
/// `Warning: 110 - "Response is Stale"` of RFC 7234 §5.5.1 — advisory only: RFC 9111
/// obsoletes the `Warning` header, so clients may ignore it (the `Age` is what tells).
fn with_age(mut resp: Response, age: Option<CacheAge>) -> Response {
    if let Some(age) = age {
        resp.headers_mut().insert(
            header::AGE,
            axum::http::HeaderValue::from(age.age.as_secs()),
        );
        if age.stale {
            resp.headers_mut().insert(
                header::WARNING,
                axum::http::HeaderValue::from_static(STALE_WARNING),
            );
        }
    }
    resp
}

/// The `Warning` of an answer served stale (RFC 7234 §5.5.1, code 110; advisory: the
/// header is obsoleted by RFC 9111).
const STALE_WARNING: &str = "110 - \"Response is Stale\"";

/// A JSON answer whose intermediate copies of secret material are wiped once written.
fn secret_json(value: &impl serde::Serialize) -> Result<Response, ApiError> {
    let body = Zeroizing::new(
        serde_json::to_vec(value)
            .map_err(|_| ApiError::BadGateway("cannot encode the answer".into()))?,
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::copy_from_slice(&body),
    )
        .into_response())
}

async fn ese_get_secret(
    State(state): State<AppState>,
    Path((store, name)): Path<(String, String)>,
    Admitted { caller, body: _ }: Admitted<EseBody>,
) -> Result<Response, ApiError> {
    let snapshot = state.snapshot.load_full();
    let remote = RemoteRef {
        key: name,
        property: None,
        version: None,
    };
    let (value, age) = read_secret(&state, &snapshot, &caller, &store, &remote).await?;
    // ESE answers Go's `string(bytes)`: invalid UTF-8 becomes U+FFFD, as here.
    let text = Zeroizing::new(String::from_utf8_lossy(&value).into_owned());
    secret_json(&*text).map(|r| with_age(r, age))
}

/// A namespace from a generator URL (or body): a Kubernetes namespace name, else 400.
/// Checked before any decision: the rule is public, so it reveals nothing.
fn check_namespace(namespace: &str, what: &str) -> Result<(), ApiError> {
    if generators::is_namespace_name(namespace) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} is not a Kubernetes namespace name"
        )))
    }
}

fn ledger_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "credential ledger failed");
    ApiError::Unavailable("credential ledger unavailable".into())
}

fn issue_refused(e: lifecycle::IssueError) -> ApiError {
    match e {
        lifecycle::IssueError::NotAudited => ApiError::AuditUnavailable,
        other => ledger_unavailable(other),
    }
}

/// The decision for `action` on a generator, then the generator itself: denied and
/// missing both answer 404. The decision is on the canonical resource
/// ([`Resource::generator`]: a cluster-scoped generator has one identity, whatever
/// namespace the URL names), and the lookup uses the same canonical key.
async fn authorized_generator(
    snapshot: &Snapshot,
    caller: &Caller,
    action: Action,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Arc<dyn Generator>, ApiError> {
    check_namespace(namespace, "namespace")?;
    let resource = Resource::generator(namespace, kind, name);
    authorize(snapshot, caller, action, &resource).await?;
    let key = GeneratorRef {
        namespace: namespace.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
    .lookup_key();
    snapshot
        .generators
        .get(&key)
        .cloned()
        .ok_or(ApiError::NotFound)
}

/// The ledger's reference to a generator: its namespace scopes the entry (revoke-states
/// by namespace). A namespaced generator's own namespace; for a cluster-scoped one the
/// holder's namespace — where the credential is used, as ESO creates a ClusterGenerator's
/// output in the ExternalSecret's namespace — never a namespace the caller picks.
fn ledger_ref(namespace: &str, kind: &str, name: &str, holder: &Holder) -> GeneratorRef {
    GeneratorRef {
        namespace: if generators::is_cluster_scoped(kind) {
            holder.namespace.clone()
        } else {
            namespace.to_string()
        },
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

async fn ese_generate(
    State(state): State<AppState>,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    Admitted { caller, body: _ }: Admitted<EseBody>,
) -> Result<Response, ApiError> {
    let (generated, _) = credentials::issue(&state, &caller, &namespace, &kind, &name).await?;
    Ok(Json(generated.data).into_response())
}

/// Revokes `owner`'s entries that `keep` selects; any failure (kept for the sweeper to
/// retry) answers 503.
async fn revoke_owned(
    state: &AppState,
    snapshot: &Snapshot,
    owner: &Owner,
    reason: &'static str,
    keep: impl Fn(&GeneratorRef) -> bool,
) -> Result<(), ApiError> {
    let Some(ledger) = state.ledger.as_deref() else {
        // Nothing revocable was ever handed out without a ledger.
        return Ok(());
    };
    let entries: Vec<_> = ledger
        .by_owner(owner)
        .await
        .map_err(ledger_unavailable)?
        .into_iter()
        .filter(|e| keep(&e.generator))
        .collect();
    revoke_now(state, ledger, snapshot, entries, reason).await
}

/// Revokes `entries` at their backends now; any failure (kept for the sweeper to retry)
/// answers 503.
async fn revoke_now(
    state: &AppState,
    ledger: &dyn Ledger,
    snapshot: &Snapshot,
    entries: Vec<crate::ledger::LedgerEntry>,
    reason: &'static str,
) -> Result<(), ApiError> {
    if entries.is_empty() {
        return Ok(());
    }
    let summary = lifecycle::revoke_entries(
        ledger,
        &snapshot.generators,
        entries,
        reason,
        state.settings.backend_timeout,
    )
    .await
    .map_err(ledger_unavailable)?;
    if summary.failed > 0 {
        return Err(ApiError::Unavailable(
            "revocation failed; it will be retried".into(),
        ));
    }
    Ok(())
}

async fn ese_revoke_own(
    State(state): State<AppState>,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    Admitted { caller, body: _ }: Admitted<EseBody>,
) -> Result<Response, ApiError> {
    let snapshot = state.snapshot.load_full();
    authorized_generator(&snapshot, &caller, Action::Revoke, &namespace, &kind, &name).await?;
    let workload = caller.workload.clone();
    let holder = Holder::new(&caller.identity, workload.as_deref());
    let generator_ref = ledger_ref(&namespace, &kind, &name, &holder);
    let owner = holder.owner();
    revoke_owned(&state, &snapshot, &owner, "request", |g| {
        *g == generator_ref
    })
    .await?;
    // ESE answers `null` on success.
    Ok(Json(serde_json::Value::Null).into_response())
}

async fn ese_revoke_states(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    Admitted {
        caller,
        body: request,
    }: Admitted<RevokeStatesBody>,
) -> Result<Response, ApiError> {
    check_namespace(&namespace, "namespace")?;
    let snapshot = state.snapshot.load_full();
    authorize(
        &snapshot,
        &caller,
        Action::RevokeStates,
        &Resource::GeneratorStates {
            namespace: namespace.clone(),
        },
    )
    .await?;
    if request.owner.is_empty() || request.namespace.is_empty() {
        return Err(ApiError::BadRequest(
            "owner and namespace are required".into(),
        ));
    }
    check_namespace(&request.namespace, "body namespace")?;
    // Owners are workloads of the caller's own federation: an Authorization's
    // allowedGeneratorStates never reaches into another cluster.
    let owner = Owner::from_ese(
        caller.identity.federation.clone(),
        request.namespace,
        &request.owner,
    );
    tracing::info!(owner = %owner.name, owner_namespace = %owner.namespace, "revoke states requested");
    revoke_owned(&state, &snapshot, &owner, "revoke_states", |g| {
        g.namespace == namespace
    })
    .await?;
    Ok(Json("GeneratorState deleted").into_response())
}

fn remote_ref_of(request: RemoteRefRequest) -> Result<RemoteRef, ApiError> {
    let r = request
        .remote_ref
        .ok_or_else(|| ApiError::BadRequest("remoteRef is required".into()))?;
    if r.key.is_empty() {
        return Err(ApiError::BadRequest("remoteRef.key is required".into()));
    }
    Ok(RemoteRef {
        key: r.key,
        property: r.property.filter(|p| !p.is_empty()),
        version: r.version.filter(|v| !v.is_empty()),
    })
}

/// `{"data": {key: base64(value)}}`, written straight to a body; every intermediate copy
/// of a value (raw and encoded) is wiped.
fn encode_map(map: BTreeMap<String, Vec<u8>>) -> Result<Response, ApiError> {
    let encoded: BTreeMap<String, Zeroizing<String>> = map
        .into_iter()
        .map(|(k, v)| {
            let v = Zeroizing::new(v);
            (k, Zeroizing::new(B64.encode(&*v)))
        })
        .collect();
    #[derive(serde::Serialize)]
    struct Data<'a> {
        data: BTreeMap<&'a str, &'a str>,
    }
    secret_json(&Data {
        data: encoded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    })
}

async fn v1_get(
    State(state): State<AppState>,
    Path(store): Path<String>,
    Admitted {
        caller,
        body: request,
    }: Admitted<RemoteRefRequest>,
) -> Result<Response, ApiError> {
    let remote = remote_ref_of(request)?;
    let snapshot = state.snapshot.load_full();
    let (value, age) = read_secret(&state, &snapshot, &caller, &store, &remote).await?;
    let encoded = Zeroizing::new(B64.encode(&*value));
    #[derive(serde::Serialize)]
    struct Value<'a> {
        value: &'a str,
    }
    secret_json(&Value { value: &encoded }).map(|r| with_age(r, age))
}

async fn v1_extract(
    State(state): State<AppState>,
    Path(store): Path<String>,
    Admitted {
        caller,
        body: request,
    }: Admitted<RemoteRefRequest>,
) -> Result<Response, ApiError> {
    let remote = remote_ref_of(request)?;
    let snapshot = state.snapshot.load_full();
    let (provider, canonical) = decide_key(&snapshot, &caller, &store, &remote).await?;
    let (map, age) = with_timeout(
        state.settings.backend_timeout,
        provider.get_secret_map_with_age(&canonical),
    )
    .await?;
    encode_map(map).map(|r| with_age(r, age))
}

async fn v1_find(
    State(state): State<AppState>,
    Path(store): Path<String>,
    Admitted {
        caller,
        body: request,
    }: Admitted<FindRequestBody>,
) -> Result<Response, ApiError> {
    let find = request
        .find
        .ok_or_else(|| ApiError::BadRequest("find is required".into()))?;
    let name_regexp = find.name.and_then(|n| n.regexp).filter(|r| !r.is_empty());
    if let Some(re) = &name_regexp {
        regex::RegexBuilder::new(re)
            .size_limit(1 << 20)
            .build()
            .map_err(|_| {
                ApiError::BadRequest("find.name.regexp is not a valid regular expression".into())
            })?;
    }
    let snapshot = state.snapshot.load_full();
    let request = FindRequest {
        path: find.path.filter(|p| !p.is_empty()),
        name_regexp,
        tags: find.tags,
    };
    // The find is decided on the store, then every key of the answer is decided as a
    // `get` on its canonical form before its value is read: a key the caller may not
    // `get` (a forbid included) is left out, whatever the find matched.
    let provider = snapshot.stores.get(&store).cloned();
    let canonical = match &provider {
        Some(p) => p.canonical_find(&request).map_err(ApiError::from),
        None => Err(ApiError::NotFound),
    };
    authorize(
        &snapshot,
        &caller,
        Action::Find,
        &Resource::Store {
            store: store.clone(),
        },
    )
    .await?;
    let (provider, canonical) = match (provider, canonical) {
        (Some(p), Ok(c)) => (p, c),
        (_, Err(e)) => return Err(e),
        (None, Ok(_)) => return Err(ApiError::NotFound),
    };
    // Each key's decision is audited like a `get`; the answer leaves only once every
    // key's line is written (503 otherwise).
    let receipts = std::sync::Mutex::new(crate::audit::Receipts::default());
    let context = caller.context();
    let allow = |key: &str| {
        let (decision, mine) = crate::audit::collect(|| {
            snapshot.policies.decide_in(
                &caller.identity,
                Action::Get,
                &Resource::RemoteKey {
                    store: store.clone(),
                    key: key.to_string(),
                },
                &context,
            )
        });
        receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(mine);
        decision.allowed
    };
    let map = with_timeout(
        state.settings.backend_timeout,
        provider.find_allowed(&canonical, &allow),
    )
    .await?;
    let receipts = receipts.into_inner().unwrap_or_else(|p| p.into_inner());
    if !receipts.written().await {
        return Err(ApiError::AuditUnavailable);
    }
    encode_map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h, "authorization"), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer   abc ".parse().unwrap());
        assert_eq!(bearer_token(&h, "authorization"), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h, "authorization"), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h, "authorization"), None);
        h.insert("x-workload-token", "tok".parse().unwrap());
        assert_eq!(bearer_token(&h, "x-workload-token"), Some("tok"));
    }

    /// One credential per request (docs/identities.md, "Precedence").
    #[test]
    fn one_credential_per_request() {
        let cert = |san: rcgen::SanType| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = vec![san];
            let key = rcgen::KeyPair::generate().unwrap();
            ClientCertificate::new(&[p.self_signed(&key).unwrap().der().clone()]).unwrap()
        };
        let svid = cert(rcgen::SanType::URI(
            "spiffe://example.org/app".try_into().unwrap(),
        ));
        let plain = cert(rcgen::SanType::DnsName(
            "client.example".try_into().unwrap(),
        ));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let none = HeaderMap::new();
        let unauthorized = |r: Result<Credential<'_>, ApiError>, says: &str| match r {
            Err(ApiError::Unauthorized(m)) => assert!(m.contains(says), "{m}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(matches!(
            credential(&bearer, None),
            Ok(Credential::Bearer("abc"))
        ));
        assert!(matches!(
            credential(&none, Some(&svid)),
            Ok(Credential::Svid(_))
        ));
        unauthorized(credential(&bearer, Some(&svid)), "two credentials");
        assert!(matches!(
            credential(&bearer, Some(&plain)),
            Ok(Credential::Bearer("abc"))
        ));
        unauthorized(credential(&none, Some(&plain)), "not an X.509-SVID");
        unauthorized(credential(&none, None), "missing bearer token");
    }
}
