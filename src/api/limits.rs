//! Abuse limits: per-source and per-identity rate limits (token buckets, 429 with
//! `Retry-After`), a cap on requests in flight (503 instead of queueing), and a deadline
//! for a whole request (a slow body upload included).
//!
//! Buckets live in bounded caches: a key idle long enough for its bucket to be full again is
//! evicted (forgetting a full bucket changes nothing), and the number of keys is capped, so a
//! flood of distinct sources or identities costs bounded memory. Refusals show in the
//! request metrics by status (429, 503).

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::error::{ApiError, ErrorStyle};

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
    /// Deadline of one request from its headers to its answer (body read included).
    pub request_timeout: Duration,
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
            request_timeout: Duration::from_secs(60),
            max_tracked_keys: 100_000,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A keyed token-bucket rate limiter with bounded memory.
pub struct RateLimiter<K: Hash + Eq + Send + Sync + 'static> {
    rate: f64,
    burst: f64,
    buckets: moka::sync::Cache<K, Arc<Mutex<Bucket>>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> RateLimiter<K> {
    /// `rate` requests per second sustained, `burst` at once; `rate == 0` allows everything.
    pub fn new(rate: u32, burst: u32, max_keys: u64) -> Self {
        let rate = f64::from(rate);
        let burst = f64::from(burst.max(1));
        // After burst/rate seconds idle a bucket is full again: forgetting it is harmless.
        let idle = if rate > 0.0 {
            Duration::from_secs_f64(burst / rate + 1.0)
        } else {
            Duration::from_secs(1)
        };
        RateLimiter {
            rate,
            burst,
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Takes one token for `key`; when none is left, how long until one is.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let burst = self.burst;
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: burst,
                last: now,
            }))
        });
        // A poisoned lock only means a panic elsewhere mid-update; the numbers stay usable.
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// The limiters shared by every request.
pub struct Limits {
    /// The settings they were made from.
    pub settings: LimitSettings,
    source: RateLimiter<IpAddr>,
    identity: RateLimiter<String>,
    in_flight: Arc<Semaphore>,
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
fn source_key(addr: IpAddr) -> IpAddr {
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

fn style_of(path: &str) -> ErrorStyle {
    if path.starts_with("/v1/") {
        ErrorStyle::Problem
    } else {
        ErrorStyle::Ese
    }
}

/// Middleware: source rate limit, in-flight cap and request deadline. Health probes are not
/// rate limited (an orchestrator probing from one address must not be locked out).
pub async fn guard(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let style = style_of(req.uri().path());
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    if !probe
        && let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(e) = limits.check_source(addr.ip())
    {
        return e.into_styled_response(style);
    }
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        tracing::warn!("too many requests in flight; shedding");
        return ApiError::Overloaded.into_styled_response(style);
    };
    match tokio::time::timeout(limits.settings.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::info!("request deadline exceeded");
            ApiError::Unavailable("request timed out".into()).into_styled_response(style)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
