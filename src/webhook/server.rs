//! `esi-server webhook`: the HTTPS server of the injection webhook. `POST /mutate` answers
//! `AdmissionReview`s ([`super::review`]); `/healthz` and `/readyz` answer `ok` once it
//! listens. The listener (connection limits, handshake and idle deadlines) and the TLS
//! files (reloaded on change) are the Federation Server's own ([`crate::runtime`],
//! [`crate::tls`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::sync::Semaphore;

use super::Settings;
use super::review::{MAX_BODY_BYTES, Outcome, review};
use crate::runtime::{ListenerSettings, serve_https_reloading};
use crate::tls::{TlsError, TlsFiles};

/// Time a client has to send the whole review once its headers arrived: the API server
/// sends it in one go (at most 3 MiB), so a body still arriving after this is a client
/// holding a slot (second review M1).
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default most reviews at once: each may hold a body of [`MAX_BODY_BYTES`] (3 MiB) and,
/// for a Pod asking for an injection, its decoded form (bounded by
/// [`super::bounds`]: about 10 MiB measured at worst); 4 slots stay under a quarter of the
/// chart's 256Mi memory limit even with the allocator's overhead (docs/webhook.md,
/// "Limits").
const DEFAULT_MAX_REVIEWS: usize = 4;
/// How long a review waits for a free slot before it is answered 503 (the API server then
/// applies the webhook configuration's `failurePolicy`).
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long one review may compute (on a blocking thread) before it is answered 503.
const REVIEW_DEADLINE: Duration = Duration::from_secs(3);

/// How many reviews run at once, bodies included: each holds one slot from before its
/// body is read until its answer is computed (so at most this many bodies of
/// [`MAX_BODY_BYTES`] are in memory), and reviews compute on blocking threads, never on
/// the workers that answer `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Reviews in progress at once (at least 1).
    pub concurrent_reviews: usize,
    /// Reviews in progress at once from one client address (IPv6: one /64), so that one
    /// client cannot hold every slot (at least 1).
    pub per_peer: usize,
    /// Time a client has to send the whole body.
    pub body_timeout: Duration,
    /// Wait for a slot before answering 503.
    pub queue_wait: Duration,
    /// Time a review may compute before answering 503.
    pub deadline: Duration,
}

impl Limits {
    /// `concurrent_reviews` slots, half of them (at least 1) per client address.
    pub fn with_slots(concurrent_reviews: usize) -> Limits {
        let concurrent_reviews = concurrent_reviews.max(1);
        Limits {
            concurrent_reviews,
            per_peer: (concurrent_reviews / 2).max(1),
            body_timeout: BODY_TIMEOUT,
            queue_wait: QUEUE_WAIT,
            deadline: REVIEW_DEADLINE,
        }
    }
}

impl Default for Limits {
    /// Two reviews per core (the work is CPU-bound and short), at least 2 and at most
    /// [`DEFAULT_MAX_REVIEWS`] (memory).
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Limits::with_slots((2 * cores).clamp(2, DEFAULT_MAX_REVIEWS))
    }
}

/// The flags of `esi-server webhook` (the binary flattens them into its subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Address to listen on (HTTPS). Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:9443", env = "ESI_WEBHOOK_LISTEN")]
    pub listen: SocketAddr,
    /// PEM certificate chain the API server is shown (its CA is the webhook
    /// configuration's `caBundle`). Reloaded when it changes.
    #[arg(long, env = "ESI_WEBHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key.
    #[arg(long, env = "ESI_WEBHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// How often the TLS files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub tls_reload_interval: Duration,
    /// Image of the injected containers: it must hold esi-cli at --cli-path (this
    /// project's image does).
    #[arg(long, default_value_t = Settings::default().image)]
    pub cli_image: String,
    /// Pull policy of that image.
    #[arg(long, default_value = "IfNotPresent")]
    pub cli_image_pull_policy: String,
    /// Where esi-cli is in that image.
    #[arg(long, default_value = "/usr/local/bin/esi-cli")]
    pub cli_path: String,
    /// Audience of the projected ServiceAccount token: one of the Federation Server's
    /// KubernetesFederation `audiences`.
    #[arg(long, default_value = "esi-federation")]
    pub audience: String,
    /// Lifetime of that token (10m to 168h; the kubelet renews it at 80 %).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub token_expiration: Duration,
    /// User of the injected containers when the Pod names none (non-root).
    #[arg(long, default_value_t = 65532)]
    pub cli_run_as_user: i64,
    /// Group of the injected containers when the Pod names none.
    #[arg(long, default_value_t = 65532)]
    pub cli_run_as_group: i64,
    /// CPU request of the injected containers (empty: none).
    #[arg(long, default_value = "10m")]
    pub cli_cpu_request: String,
    /// Memory request of the injected containers (empty: none).
    #[arg(long, default_value = "32Mi")]
    pub cli_memory_request: String,
    /// CPU limit of the injected containers (empty: none).
    #[arg(long, default_value = "")]
    pub cli_cpu_limit: String,
    /// Memory limit of the injected containers (empty: none).
    #[arg(long, default_value = "128Mi")]
    pub cli_memory_limit: String,
    /// Reviews in progress at once, bodies included (0: twice the cores, 2 to 4; each
    /// may take ~15 MiB, see docs/webhook.md "Limits"); one client address gets half of
    /// them; more wait up to 1 s, then get 503 (the API server applies `failurePolicy`).
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_reviews: usize,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::support::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Certificate and key (no client certificates: the API server presents none by default).
    pub tls: TlsFiles,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// What the injected containers are made of.
    pub settings: Settings,
    /// Connection limits.
    pub listener: ListenerSettings,
    /// Review concurrency and deadlines.
    pub limits: Limits,
}

impl WebhookArgs {
    /// The flags as a checked configuration.
    ///
    /// # Errors
    /// The first flag that cannot work.
    pub fn into_config(self) -> Result<WebhookConfig, WebhookError> {
        let quantity = |flag: &str, v: &str| -> Result<Option<Quantity>, WebhookError> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            let ok = v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
                && v.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(WebhookError::Settings(format!(
                    "--{flag}: {v:?} is not a Kubernetes quantity (100m, 64Mi)"
                )));
            }
            Ok(Some(Quantity(v.to_string())))
        };
        let pairs = |cpu: Option<Quantity>, memory: Option<Quantity>| {
            let map: std::collections::BTreeMap<String, Quantity> =
                [("cpu", cpu), ("memory", memory)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
            (!map.is_empty()).then_some(map)
        };
        let settings = Settings {
            image: self.cli_image,
            image_pull_policy: self.cli_image_pull_policy,
            cli_path: self.cli_path,
            audience: self.audience,
            token_expiration_seconds: i64::try_from(self.token_expiration.as_secs())
                .unwrap_or(i64::MAX),
            run_as_user: self.cli_run_as_user,
            run_as_group: self.cli_run_as_group,
            resources: ResourceRequirements {
                requests: pairs(
                    quantity("cli-cpu-request", &self.cli_cpu_request)?,
                    quantity("cli-memory-request", &self.cli_memory_request)?,
                ),
                limits: pairs(
                    quantity("cli-cpu-limit", &self.cli_cpu_limit)?,
                    quantity("cli-memory-limit", &self.cli_memory_limit)?,
                ),
                ..ResourceRequirements::default()
            },
        };
        settings.validate().map_err(WebhookError::Settings)?;
        Ok(WebhookConfig {
            listen: self.listen,
            tls: TlsFiles {
                cert: self.tls_cert,
                key: self.tls_key,
                client_ca: None,
            },
            tls_reload_interval: self.tls_reload_interval,
            settings,
            listener: ListenerSettings::default(),
            limits: match self.max_concurrent_reviews {
                0 => Limits::default(),
                n => Limits::with_slots(n.min(1024)),
            },
        })
    }
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A setting cannot work.
    #[error("{0}")]
    Settings(String),
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("webhook server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the handlers share.
struct AppState {
    settings: Arc<Settings>,
    slots: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    /// Per client address, the slots it may hold (entries live while a review of that
    /// address is in progress).
    peers: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A review's hold on its client address's share; gives it back, and forgets the address
/// when no review of it is left, when dropped.
struct PeerSlot {
    state: Arc<AppState>,
    peer: IpAddr,
    share: Option<Arc<Semaphore>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.permit.take();
        self.share.take();
        let mut peers = self.state.peers.lock().unwrap_or_else(|p| p.into_inner());
        // Clones are made under this lock: only the map's is left when nobody waits.
        if peers
            .get(&self.peer)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            peers.remove(&self.peer);
        }
    }
}

impl AppState {
    /// Waits (within the queue wait) for a slot of `peer`'s share, then for a slot.
    async fn slot(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Option<(PeerSlot, tokio::sync::OwnedSemaphorePermit)> {
        let share = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_peer)))
                .clone()
        };
        let mut held = PeerSlot {
            state: self.clone(),
            peer,
            share: Some(share.clone()),
            permit: None,
        };
        let both = async {
            held.permit = Some(share.acquire_owned().await.ok()?);
            self.slots.clone().acquire_owned().await.ok()
        };
        match tokio::time::timeout(self.limits.queue_wait, both).await {
            Ok(Some(slot)) => Some((held, slot)),
            _ => None,
        }
    }
}

/// The routes: `POST /mutate`, `GET /healthz`, `GET /readyz`.
pub fn router(settings: Settings, limits: Limits) -> Router {
    let limits = Limits {
        concurrent_reviews: limits.concurrent_reviews.max(1),
        ..limits
    };
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .with_state(Arc::new(AppState {
            settings: Arc::new(settings),
            slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrent_reviews)),
            limits: Limits {
                per_peer: limits.per_peer.clamp(1, limits.concurrent_reviews),
                ..limits
            },
            peers: Mutex::new(HashMap::new()),
        }))
}

async fn ok() -> &'static str {
    "ok"
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

fn unavailable(text: impl Into<String>) -> Response {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, text);
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// `POST /mutate`: a slot first, within its client address's share (503 when none frees
/// up in time), then the body (at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`]), then
/// the review on a blocking thread within the deadline (503 past it; the slot is held
/// until the computation really ends).
async fn mutate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an AdmissionReview is sent as application/json",
        );
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            crate::api::limits::source_key(c.0.ip())
        });
    let Some((peer_slot, slot)) = state.slot(peer).await else {
        tracing::warn!(
            limit = state.limits.concurrent_reviews,
            per_peer = state.limits.per_peer,
            %peer,
            "review refused: every slot (or the client's share) busy"
        );
        return unavailable(format!(
            "the webhook is busy ({} reviews in progress, {} at most per client): try again",
            state.limits.concurrent_reviews, state.limits.per_peer
        ));
    };
    let body: Body = req.into_body();
    let bytes = match tokio::time::timeout(
        state.limits.body_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {MAX_BODY_BYTES} bytes (or was cut short)"),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the review did not arrive in time",
            );
        }
    };
    let settings = state.settings.clone();
    let work = tokio::task::spawn_blocking(move || {
        let _slot = (slot, peer_slot);
        review(&bytes, &settings)
    });
    let result = match tokio::time::timeout(state.limits.deadline, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            tracing::error!("review failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "the review failed");
        }
        Err(_) => {
            tracing::warn!(
                deadline_ms = state.limits.deadline.as_millis(),
                "review past its deadline"
            );
            return unavailable("the review took too long");
        }
    };
    match result {
        Ok(answer) => {
            match &answer.outcome {
                Outcome::Unchanged => {
                    tracing::debug!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, "admitted unchanged")
                }
                Outcome::Mutated(ops) => {
                    tracing::info!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, operations = ops, "injected")
                }
                Outcome::Denied { code, field } => {
                    tracing::info!(uid = %answer.uid, namespace = %answer.namespace, pod = %answer.name, code, field = %field, "denied")
                }
            }
            axum::Json(answer.review).into_response()
        }
        Err(e) => {
            tracing::info!(error = %e, "malformed review");
            plain(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Serves the webhook until `shutdown` completes; `on_listening` gets the bound address.
///
/// # Errors
/// [`WebhookError`]: settings, TLS files, the address, or the listener failing.
pub async fn serve(
    config: WebhookConfig,
    on_listening: impl FnOnce(SocketAddr) + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), WebhookError> {
    config.settings.validate().map_err(WebhookError::Settings)?;
    let tls_config = config.tls.load()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, image = %config.settings.image, audience = %config.settings.audience, "webhook listening (HTTPS)");
    on_listening(addr);
    serve_https_reloading(
        listener,
        config.tls,
        tls_config,
        config.tls_reload_interval,
        router(config.settings, config.limits),
        config.listener,
        shutdown,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookArgs,
    }

    fn config(extra: &[&str]) -> Result<WebhookConfig, WebhookError> {
        let mut argv = vec!["webhook", "--tls-cert=/c", "--tls-key=/k"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args.into_config()
    }

    /// Review finding 2: a slot is taken before the body is read; with every slot held
    /// by a body still arriving, the next review is refused 503 after the queue wait (not
    /// after the body timeout), and `/healthz` is still answered.
    #[tokio::test]
    async fn reviews_past_the_limit_are_refused_quickly_and_healthz_answers() {
        use tower::ServiceExt;
        let limits = Limits {
            concurrent_reviews: 2,
            per_peer: 2,
            queue_wait: Duration::from_millis(200),
            ..Limits::with_slots(2)
        };
        let app = router(Settings::default(), limits);
        let post = |body: Body| {
            Request::builder()
                .method("POST")
                .uri("/mutate")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap()
        };
        let stalled = || {
            Body::from_stream(futures_util::stream::pending::<
                Result<axum::body::Bytes, std::io::Error>,
            >())
        };
        let mut held = Vec::new();
        for _ in 0..limits.concurrent_reviews {
            held.push(tokio::spawn(app.clone().oneshot(post(stalled()))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let r = app.clone().oneshot(post(Body::from("{}"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let h = app
            .clone()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(h.status(), StatusCode::OK);
        // A slot freed (the stalled client gone): reviews are answered again.
        for h in held {
            h.abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = app.oneshot(post(Body::from("{}"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    fn post_from(peer: &str, body: Body) -> Request {
        let mut r = Request::builder()
            .method("POST")
            .uri("/mutate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap();
        let addr: SocketAddr = peer.parse().unwrap();
        r.extensions_mut().insert(ConnectInfo(addr));
        r
    }

    fn stalled() -> Body {
        Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >())
    }

    /// Second review M1: a body still arriving after the body deadline (2 s: the API
    /// server sends the review in one go) is answered 408 and its slot given back.
    #[tokio::test]
    async fn a_stalled_body_releases_its_slot_within_the_body_deadline() {
        use tower::ServiceExt;
        let limits = Limits::with_slots(1);
        assert_eq!(limits.body_timeout, Duration::from_secs(2));
        let app = router(Settings::default(), limits);
        let started = std::time::Instant::now();
        let r = app
            .clone()
            .oneshot(post_from("10.0.0.9:1000", stalled()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        // The slot is free again: the next review is read and answered at once.
        let started = std::time::Instant::now();
        let r = app
            .oneshot(post_from("10.0.0.9:1001", Body::from("{}")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    /// Second review M1: one client address holds at most half the slots; another
    /// client (the API server) still gets its reviews answered.
    #[tokio::test]
    async fn one_client_holds_at_most_half_the_slots() {
        use tower::ServiceExt;
        let limits = Limits {
            queue_wait: Duration::from_millis(200),
            ..Limits::with_slots(4)
        };
        assert_eq!(limits.per_peer, 2);
        let app = router(Settings::default(), limits);
        let mut held = Vec::new();
        for port in [1, 2] {
            let req = post_from(&format!("10.0.0.66:{port}"), stalled());
            held.push(tokio::spawn(app.clone().oneshot(req)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = app
            .clone()
            .oneshot(post_from("10.0.0.66:3", Body::from("{}")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        for port in [1, 2] {
            let r = app
                .clone()
                .oneshot(post_from(&format!("10.0.0.1:{port}"), Body::from("{}")))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        }
        for h in held {
            h.abort();
        }
    }

    #[test]
    fn default_concurrency_fits_the_charts_memory_limit() {
        let d = Limits::default();
        assert!(
            (2..=DEFAULT_MAX_REVIEWS).contains(&d.concurrent_reviews),
            "{d:?}"
        );
        // Each slot: a body and a bounded decoded Pod (measured ≲ 10 MiB): 4 × 16 MiB is a
        // quarter of the chart's 256Mi limit.
        const { assert!(DEFAULT_MAX_REVIEWS * (MAX_BODY_BYTES + 13 * 1024 * 1024) <= 128 * 1024 * 1024) };
        assert_eq!(d.per_peer, d.concurrent_reviews / 2);
    }

    #[test]
    fn flags_become_settings_and_bad_ones_are_named() {
        let c = config(&["--cli-cpu-limit=500m", "--cli-memory-request="]).unwrap();
        assert_eq!(c.settings.token_expiration_seconds, 600);
        let r = &c.settings.resources;
        assert_eq!(r.requests.as_ref().unwrap().get("memory"), None);
        assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "128Mi");
        assert_eq!(c.limits, Limits::default());
        assert!(c.limits.concurrent_reviews >= 2);
        let c = config(&["--max-concurrent-reviews=3"]).unwrap();
        assert_eq!(c.limits.concurrent_reviews, 3);
        assert_eq!(c.limits.per_peer, 1);
        let e = config(&["--cli-memory-limit=lots"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--cli-memory-limit"), "{e}");
        let e = config(&["--token-expiration=5m"]).unwrap_err().to_string();
        assert!(e.starts_with("--token-expiration"), "{e}");
        let e = config(&["--cli-run-as-user=0"]).unwrap_err().to_string();
        assert!(e.starts_with("--cli-run-as-user"), "{e}");
    }
}
