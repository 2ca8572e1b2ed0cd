//! Abuse limits: per-source and per-identity rate limits (429 with `Retry-After`), caps on
//! requests in flight overall and per source (503 instead of queueing), bounded request heads
//! (431), a token that must look like a JWS before the body is read, a short deadline for the
//! body upload (408) and a deadline for a whole request.
//!
//! Rate limits are GCRA token buckets (`governor`) kept in bounded caches: a key idle long
//! enough for its bucket to be full again is evicted (forgetting a full bucket changes
//! nothing), and the number of keys is capped, so a flood of distinct sources or identities
//! costs bounded memory. Refusals show in the request metrics by status (413, 429, 431, 503).
//!
//! Order of the checks in [`guard`], cheapest and least trusting first: header section size,
//! source rate, per-source then global in-flight permits, token presence/size/shape (no
//! signature yet: that needs the body's `ca.crt`), then the body (size and read deadline). A
//! slow uploader therefore holds at most its source's share of the permits, for at most the
//! body read deadline (security review finding 6).

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Version, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::logging::Throttled;

/// Abuse-limit tunables. A rate of 0 disables that limit.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Sustained requests per second from one source address (IPv6: per /64).
    pub per_source_rate: u32,
    /// Requests one source may make in a burst.
    pub per_source_burst: u32,
    /// Sustained requests per second of one authenticated identity (federation + subject).
    pub per_identity_rate: u32,
    /// Requests one identity may make in a burst.
    pub per_identity_burst: u32,
    /// Requests handled at once; more are refused with 503 (load shedding, no queue).
    pub max_concurrent_requests: usize,
    /// Requests one source address (IPv6: /64) may have in flight; more are refused with 503.
    pub max_concurrent_requests_per_source: usize,
    /// Deadline of one request from its headers to its answer (body read included).
    pub request_timeout: Duration,
    /// Deadline for the whole body to arrive, from the end of the headers; later → 408.
    pub body_read_timeout: Duration,
    /// Largest request body (bytes); larger → 413.
    pub max_body_bytes: usize,
    /// Largest bearer token or `x-workload-token` (bytes); larger → 413.
    pub max_token_bytes: usize,
    /// Largest header section (bytes: names plus values, as HPACK counts them without the
    /// 32-byte overhead); larger → 431 on HTTP/1.1 and HTTP/2 alike.
    pub max_header_bytes: usize,
    /// Most sources or identities tracked at once (each limiter).
    pub max_tracked_keys: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_source_rate: 100,
            per_source_burst: 200,
            per_identity_rate: 50,
            per_identity_burst: 100,
            max_concurrent_requests: 512,
            max_concurrent_requests_per_source: 64,
            request_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            max_token_bytes: 16 * 1024,
            max_header_bytes: 64 * 1024,
            max_tracked_keys: 100_000,
        }
    }
}

/// A keyed rate limiter with bounded memory: one `governor` GCRA limiter per key, kept in a
/// bounded cache.
pub struct RateLimiter<K: Hash + Eq + Send + Sync + 'static> {
    quota: Option<Quota>,
    buckets: moka::sync::Cache<K, Arc<DefaultDirectRateLimiter>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> RateLimiter<K> {
    /// `rate` requests per second sustained, `burst` at once; `rate == 0` allows everything.
    pub fn new(rate: u32, burst: u32, max_keys: u64) -> Self {
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = NonZeroU32::new(rate).map(|r| Quota::per_second(r).allow_burst(burst_nz));
        // After burst/rate seconds idle a bucket is full again: forgetting it is harmless.
        let idle = if rate > 0 {
            Duration::from_secs_f64(f64::from(burst_nz.get()) / f64::from(rate) + 1.0)
        } else {
            Duration::from_secs(1)
        };
        RateLimiter {
            quota,
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Takes one request for `key`; when none is allowed, how long until one is.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        let bucket = self
            .buckets
            .get_with(key, || Arc::new(governor::RateLimiter::direct(quota)));
        bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Per-key caps on things held at once (requests in flight), with bounded memory.
struct KeyedCap<K: Hash + Eq + Send + Sync + 'static> {
    per_key: usize,
    semaphores: moka::sync::Cache<K, Arc<Semaphore>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> KeyedCap<K> {
    fn new(per_key: usize, max_keys: u64, hold: Duration) -> Self {
        KeyedCap {
            per_key: per_key.max(1),
            // Idle long enough that an entry is never forgotten while a permit of it is
            // held (a request lasts at most `hold`); only a flood past `max_keys` distinct
            // keys can evict a busy one, which then starts a fresh count.
            semaphores: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(hold + Duration::from_secs(60))
                .build(),
        }
    }

    fn try_acquire(&self, key: K) -> Option<OwnedSemaphorePermit> {
        let per_key = self.per_key;
        self.semaphores
            .get_with(key, || Arc::new(Semaphore::new(per_key)))
            .try_acquire_owned()
            .ok()
    }
}

/// The limiters shared by every request.
pub struct Limits {
    /// The settings they were made from.
    pub settings: LimitSettings,
    source: RateLimiter<IpAddr>,
    identity: RateLimiter<String>,
    in_flight: Arc<Semaphore>,
    in_flight_per_source: KeyedCap<IpAddr>,
    shedding: Throttled,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Limits {
    /// Limiters for `settings`.
    pub fn new(settings: LimitSettings) -> Self {
        Limits {
            source: RateLimiter::new(
                settings.per_source_rate,
                settings.per_source_burst,
                settings.max_tracked_keys,
            ),
            identity: RateLimiter::new(
                settings.per_identity_rate,
                settings.per_identity_burst,
                settings.max_tracked_keys,
            ),
            in_flight: Arc::new(Semaphore::new(settings.max_concurrent_requests.max(1))),
            in_flight_per_source: KeyedCap::new(
                settings.max_concurrent_requests_per_source,
                settings.max_tracked_keys,
                settings.request_timeout,
            ),
            shedding: Throttled::new(Duration::from_secs(10)),
            settings,
        }
    }

    /// One request of an authenticated identity.
    pub fn check_identity(&self, federation: &str, subject: &str) -> Result<(), ApiError> {
        // NUL cannot occur in either part, so the key is unambiguous.
        self.identity
            .check(format!("{federation}\0{subject}"))
            .map_err(|wait| {
                tracing::info!(federation, subject, "identity rate limit exceeded");
                ApiError::RateLimited {
                    retry_after_secs: retry_secs(wait),
                }
            })
    }

    /// One request from `addr`.
    pub fn check_source(&self, addr: IpAddr) -> Result<(), ApiError> {
        self.source.check(source_key(addr)).map_err(|wait| {
            tracing::info!(source = %addr, "source rate limit exceeded");
            ApiError::RateLimited {
                retry_after_secs: retry_secs(wait),
            }
        })
    }

    /// Permits for one request from `source` (when known): its source's share first, then
    /// the global cap. Refused → 503 with `Retry-After` (no queue).
    fn admit_in_flight(&self, source: Option<IpAddr>) -> Result<Permits, ApiError> {
        let per_source = match source {
            Some(ip) => match self.in_flight_per_source.try_acquire(source_key(ip)) {
                Some(p) => Some(p),
                None => {
                    self.shed("too many requests in flight from one source; shedding");
                    return Err(ApiError::Overloaded);
                }
            },
            None => None,
        };
        let Ok(global) = self.in_flight.clone().try_acquire_owned() else {
            self.shed("too many requests in flight; shedding");
            return Err(ApiError::Overloaded);
        };
        Ok(Permits {
            _global: global,
            _per_source: per_source,
        })
    }

    fn shed(&self, what: &'static str) {
        if let Some(suppressed) = self.shedding.tick() {
            tracing::warn!(suppressed, "{what}");
        }
    }

    /// The credential and `x-workload-token`, before the body is read: one credential
    /// ([`super::credential`]: an X.509-SVID client certificate or a bearer token), a bearer
    /// token within the size limit and shaped like a compact JWS (RFC 7515 §7.1). Signatures
    /// and chains are verified later, by `authn`, once the body's `ca.crt` is known.
    fn check_tokens(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&Arc<crate::authn::ClientCertificate>>,
    ) -> Result<(), ApiError> {
        let max = self.settings.max_token_bytes;
        if let super::Credential::Bearer(bearer) = super::credential(headers, client_cert)? {
            crate::authn::check_token_shape(bearer, max)?;
        }
        if let Some(workload) = super::bearer_token(headers, "x-workload-token") {
            crate::authn::check_token_shape(workload, max).map_err(|e| {
                match ApiError::from(e) {
                    ApiError::Unauthorized(m) => {
                        ApiError::Unauthorized(format!("x-workload-token: {m}"))
                    }
                    other => other,
                }
            })?;
        }
        Ok(())
    }

    /// Reads the whole body within the size limit and the body read deadline. On failure
    /// the error and what is left of the body (a 413 drains it, see [`drain`]).
    async fn read_body(
        &self,
        mut body: Body,
        declared: Option<u64>,
    ) -> Result<Bytes, (ApiError, Body)> {
        let max = self.settings.max_body_bytes;
        if declared.is_some_and(|n| n > max as u64) {
            return Err((ApiError::TooLarge, body));
        }
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        let read = tokio::time::timeout(self.settings.body_read_timeout, async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|_| ApiError::BadRequest("cannot read request body".into()))?;
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > max {
                        return Err(ApiError::TooLarge);
                    }
                    buf.extend_from_slice(data);
                }
            }
            Ok(())
        })
        .await;
        match read {
            Ok(Ok(())) => Ok(Bytes::from(buf)),
            Ok(Err(e)) => Err((e, body)),
            Err(_) => {
                tracing::info!("request body not received in time");
                Err((ApiError::BodyTimeout, body))
            }
        }
    }
}

struct Permits {
    _global: OwnedSemaphorePermit,
    _per_source: Option<OwnedSemaphorePermit>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(LimitSettings::default())
    }
}

fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64, the unit one host usually gets.
pub fn source_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// Bytes of the header section as HPACK counts them, without its 32-byte overhead per field.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// Most of a refused request's body read and thrown away before answering.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
/// Longest time spent doing so.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// Reads and discards what is left of a refused HTTP/1.1 body (at most [`DRAIN_MAX_BYTES`]
/// within [`DRAIN_MAX_TIME`]). Answering early and closing a socket that still holds unread
/// data makes the kernel send a TCP RST, which can destroy the answer in flight: the client
/// then sees a reset instead of the 413 (RFC 9112 §9.6 asks servers to drain before closing).
/// HTTP/2 refuses a stream's remaining data without harm, so nothing is read there.
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0usize;
        while seen <= DRAIN_MAX_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    })
    .await;
}

/// The answer to a refused request. On HTTP/1.1 a body still on the wire is drained in a task
/// of its own (see [`drain`]) while the answer goes out at once, and the connection closes
/// afterwards (`Connection: close`); HTTP/2 just drops the stream's remaining data.
fn refuse(error: ApiError, version: Version, body: Option<Body>) -> Response {
    let mut resp = error.into_response();
    if version != Version::HTTP_2
        && let Some(body) = body
    {
        tokio::spawn(drain(body));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Middleware: the abuse limits of every request, in the order the module docs give, then
/// the whole-request deadline. Health probes are neither rate limited nor counted against
/// the caps (an orchestrator probing from one address must not be locked out); unrouted
/// paths skip the token check (they answer 404).
pub async fn guard<F, Fut>(limits: &Limits, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let path = req.uri().path();
    let probe = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let routed = req.extensions().get::<MatchedPath>().is_some();
    let version = req.version();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let (parts, body) = req.into_parts();
    let pending = (!http_body::Body::is_end_stream(&body)).then_some(body);

    if header_bytes(&parts.headers) > limits.settings.max_header_bytes {
        return refuse(ApiError::HeadersTooLarge, version, pending);
    }
    if probe {
        let req = Request::from_parts(parts, pending.unwrap_or_else(Body::empty));
        return next(req).await;
    }
    if let Some(ip) = source
        && let Err(e) = limits.check_source(ip)
    {
        return refuse(e, version, pending);
    }
    let _permits = match limits.admit_in_flight(source) {
        Ok(p) => p,
        Err(e) => return refuse(e, version, pending),
    };
    let deadline = limits.settings.request_timeout;
    let work = async {
        if routed
            && let Err(e) = limits.check_tokens(
                &parts.headers,
                parts
                    .extensions
                    .get::<Arc<crate::authn::ClientCertificate>>(),
            )
        {
            return refuse(e, version, pending);
        }
        let body = match pending {
            None => Bytes::new(),
            Some(body) => {
                let declared = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match limits.read_body(body, declared).await {
                    Ok(bytes) => bytes,
                    // Only a too-large body is worth draining; a slow or broken one is
                    // not (the connection closes).
                    Err((e @ ApiError::TooLarge, rest)) => {
                        return refuse(e, version, Some(rest));
                    }
                    Err((e, _)) => {
                        let mut resp = e.into_response();
                        if version != Version::HTTP_2 {
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        return resp;
                    }
                }
            }
        };
        next(Request::from_parts(parts, Body::from(body))).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::info!("request deadline exceeded");
            ApiError::Unavailable("request timed out".into()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorStyle;

    use std::convert::Infallible;

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    use axum::routing::post;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    /// A JWS-shaped token (ES256 header, claims with an issuer, a signature part); its
    /// signature is not checked by the guard.
    fn shaped_token() -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"iss":"https://c.example"}"#),
            b64("sig")
        )
    }

    /// A router with one authenticated-looking route that echoes the body length, behind
    /// the guard; `hold` makes the handler wait for a notification before answering.
    fn app(settings: LimitSettings, hold: Option<Arc<tokio::sync::Notify>>) -> Router {
        let limits = Arc::new(Limits::new(settings));
        Router::new()
            .route(
                "/secretstore/{store}/secrets/{*name}",
                post(move |body: Bytes| {
                    let hold = hold.clone();
                    async move {
                        if let Some(h) = hold {
                            h.notified().await;
                        }
                        body.len().to_string()
                    }
                }),
            )
            .layer(middleware::from_fn_with_state(
                limits,
                |State(limits): State<Arc<Limits>>, req: Request, next: Next| async move {
                    crate::api::render_errors(ErrorStyle::Ese, req, |req| {
                        guard(&limits, req, |req| next.run(req))
                    })
                    .await
                },
            ))
    }

    fn request(from: &str, token: Option<&str>, body: Body) -> Request {
        let mut b = Request::post("/secretstore/s/secrets/k");
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = b.body(body).unwrap();
        let addr: SocketAddr = format!("{from}:40000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    }

    /// A body fed chunk by chunk through the returned sender; it ends when the sender drops.
    fn streamed() -> (mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        (tx, Body::new(StreamBody::new(stream)))
    }

    async fn text(resp: Response) -> String {
        let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn a_header_section_over_the_limit_is_431_in_both_styles() {
        let settings = LimitSettings {
            max_header_bytes: 1024,
            ..LimitSettings::default()
        };
        let token = shaped_token();
        let mut req = request("10.0.0.1", Some(&token), Body::from("{}"));
        req.headers_mut().insert(
            "x-padding",
            HeaderValue::from_str(&"a".repeat(1100)).unwrap(),
        );
        let resp = app(settings.clone(), None).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(text(resp).await, r#""request header fields too large""#);
        // Just under the limit passes.
        let mut req = request("10.0.0.1", Some(&token), Body::from("{}"));
        req.headers_mut().insert(
            "x-padding",
            HeaderValue::from_str(&"a".repeat(500)).unwrap(),
        );
        let resp = app(settings, None).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_refused_before_the_body_is_awaited() {
        // A body that never arrives: every refusal below must come without waiting for it.
        for (token, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("not-a-jws".to_string()), StatusCode::UNAUTHORIZED),
            (Some("a".repeat(20_000)), StatusCode::PAYLOAD_TOO_LARGE),
        ] {
            let (_tx, body) = streamed();
            let req = request("10.0.0.1", token.as_deref(), body);
            let start = tokio::time::Instant::now();
            let resp = app(LimitSettings::default(), None)
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(resp.status(), want, "{token:?}");
            assert!(
                start.elapsed() < Duration::from_millis(1),
                "waited for the body"
            );
        }
        // A malformed x-workload-token is named as such.
        let (_tx, body) = streamed();
        let mut req = request("10.0.0.1", Some(&shaped_token()), body);
        req.headers_mut()
            .insert("x-workload-token", HeaderValue::from_static("a.b"));
        let resp = app(LimitSettings::default(), None)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(text(resp).await.contains("x-workload-token"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_gets_408_at_the_body_deadline() {
        let settings = LimitSettings {
            body_read_timeout: Duration::from_secs(3),
            ..LimitSettings::default()
        };
        let (tx, body) = streamed();
        tx.send(Bytes::from_static(b"{")).await.unwrap();
        let start = tokio::time::Instant::now();
        let resp = app(settings, None)
            .oneshot(request("10.0.0.1", Some(&shaped_token()), body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(resp.headers().get(header::CONNECTION).unwrap(), "close");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_drained_then_413() {
        let settings = LimitSettings {
            max_body_bytes: 1000,
            ..LimitSettings::default()
        };
        // Declared too large: refused without buffering, the body read (drained) anyway.
        let (tx, body) = streamed();
        let mut req = request("10.0.0.1", Some(&shaped_token()), body);
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4000"));
        let feeder = tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send(Bytes::from(vec![b'x'; 1000])).await.is_err() {
                    return false;
                }
            }
            true
        });
        let resp = app(settings.clone(), None).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(feeder.await.unwrap(), "the body was not read to its end");
        // Undeclared (chunked) and too large.
        let body = Body::from(vec![b'x'; 1001]);
        let resp = app(settings.clone(), None)
            .oneshot(request("10.0.0.1", Some(&shaped_token()), body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // At the limit: handed to the handler whole.
        let body = Body::from(vec![b'x'; 1000]);
        let resp = app(settings, None)
            .oneshot(request("10.0.0.1", Some(&shaped_token()), body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(text(resp).await, "1000");
    }

    #[tokio::test]
    async fn one_source_holds_at_most_its_share_of_the_in_flight_permits() {
        let settings = LimitSettings {
            max_concurrent_requests_per_source: 3,
            max_concurrent_requests: 5,
            ..LimitSettings::default()
        };
        let hold = Arc::new(tokio::sync::Notify::new());
        let app = app(settings, Some(hold.clone()));
        let send = |from: &'static str| {
            let app = app.clone();
            tokio::spawn(async move {
                let resp = app
                    .oneshot(request(from, Some(&shaped_token()), Body::from("{}")))
                    .await
                    .unwrap();
                resp.status()
            })
        };
        let held: Vec<_> = (0..3).map(|_| send("10.0.0.1")).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The fourth from the same source is shed; another source still gets in.
        assert_eq!(
            send("10.0.0.1").await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let other: Vec<_> = (0..2).map(|_| send("10.0.0.2")).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Now the global cap (5) is full.
        assert_eq!(
            send("10.0.0.3").await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        hold.notify_waiters();
        for h in held.into_iter().chain(other) {
            assert_eq!(h.await.unwrap(), StatusCode::OK);
        }
        // Permits come back.
        let again = send("10.0.0.1");
        tokio::time::sleep(Duration::from_millis(50)).await;
        hold.notify_waiters();
        assert_eq!(again.await.unwrap(), StatusCode::OK);
    }

    #[test]
    fn bucket_allows_a_burst_then_refuses_with_a_wait() {
        let l = RateLimiter::new(1, 3, 10);
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        // Another key has its own bucket.
        assert!(l.check("b").is_ok());
        // Disabled.
        let off = RateLimiter::new(0, 1, 10);
        for _ in 0..100 {
            assert!(off.check("a").is_ok());
        }
    }

    #[test]
    fn bucket_refills() {
        let l = RateLimiter::new(50, 1, 10);
        assert!(l.check(1u8).is_ok());
        assert!(l.check(1u8).is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.check(1u8).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(1, 1, 100);
        for i in 0..10_000u32 {
            let _ = l.check(i);
        }
        l.buckets.run_pending_tasks();
        assert!(
            l.buckets.entry_count() <= 100,
            "{}",
            l.buckets.entry_count()
        );
    }

    #[test]
    fn source_keys() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(source_key(a), source_key(c));
    }

    #[test]
    fn identity_limit_answers_429_with_retry_after() {
        let limits = Limits::new(LimitSettings {
            per_identity_rate: 1,
            per_identity_burst: 1,
            ..LimitSettings::default()
        });
        assert!(limits.check_identity("f", "s").is_ok());
        let e = limits.check_identity("f", "s").unwrap_err();
        let r = e.into_styled_response(ErrorStyle::Ese);
        assert_eq!(r.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        assert!(limits.check_identity("f", "other").is_ok());
    }
}
