//! The HTTPS listener: accepts TCP connections, bounds them per source and overall, runs the
//! TLS handshake within a deadline, serves HTTP/1.1 and HTTP/2 (hyper), and closes
//! connections that sit idle (security review finding 5: idle TLS connections and HTTP/2
//! connections answering only PINGs used to live forever, so one source could hold every
//! descriptor).
//!
//! A connection's life, with the settings that bound it:
//! - accepted only while its source (IPv4 address, IPv6 /64) holds fewer than
//!   `max_connections_per_source` and the server fewer than `max_connections`; otherwise it
//!   is closed at once, before any TLS work;
//! - the TLS handshake must finish within `tls_handshake_timeout`;
//! - the first request must start within `first_request_timeout` (HTTP/1 heads must also
//!   arrive within `header_read_timeout`);
//! - afterwards, `idle_timeout` with no request in flight closes it (HTTP/1: close; HTTP/2:
//!   GOAWAY). Only requests count as activity: PINGs, SETTINGS and window updates do not.
//! - on shutdown every connection is asked to finish (in-flight requests complete) within
//!   `shutdown_grace`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::api::limits::source_key;
use crate::logging::Throttled;
use crate::metrics::METRICS;

/// Connection limits and HTTP settings of the listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Deadline for the TLS handshake, from accept.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1: deadline for a request head once its first byte arrived (slowloris).
    pub header_read_timeout: Duration,
    /// Deadline for the first request to start, from the end of the TLS handshake.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, all sources; clamped below the open-file limit.
    pub max_connections: usize,
    /// Connections open at once from one source (IPv4 address, IPv6 /64).
    pub max_connections_per_source: usize,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 protocol ceiling for a header list (bytes); the application's own, lower limit
    /// answers 431 (see `api::limits`).
    pub http2_max_header_list_bytes: u32,
    /// Time connections get to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_source: 256,
            http2_max_concurrent_streams: 64,
            http2_max_header_list_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Descriptors kept free for everything else (backends, JWKS fetches, files, metrics).
const RESERVED_DESCRIPTORS: u64 = 128;

/// The soft open-file limit of the process, if it can be read.
fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// `max_connections`, lowered so that connections alone cannot exhaust the descriptors.
pub fn effective_max_connections(configured: usize) -> usize {
    match open_file_limit() {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
    .max(1)
}

/// Open connections per source and overall.
struct Counts {
    per_source: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// One admitted connection; gives its place back on drop.
struct Admitted {
    counts: Arc<Counts>,
    source: IpAddr,
}

impl Counts {
    fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        per_source: usize,
        total: usize,
    ) -> Result<Admitted, &'static str> {
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::SeqCst) >= total {
            return Err("refused_total");
        }
        let n = map.entry(source).or_insert(0);
        if *n >= per_source {
            return Err("refused_per_source");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        METRICS.open_connections.inc();
        Ok(Admitted {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::SeqCst);
        METRICS.open_connections.dec();
    }
}

/// Requests of one connection: how many are in flight, and when the last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request ended (or the connection began).
    last_ms: AtomicU64,
    served: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
    }

    fn end(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection becomes idle for good, or `None` while a request is in flight.
    fn idle_deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let limit = if self.served.load(Ordering::SeqCst) {
            idle
        } else {
            first
        };
        Some(self.start + Duration::from_millis(self.last_ms.load(Ordering::SeqCst)) + limit)
    }
}

/// Ends a request's activity when its handler future completes or is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Serves `app` over HTTPS on `listener` until `shutdown` completes, then lets connections
/// finish within `shutdown_grace`. `tls` is read per connection, so a swapped config (TLS
/// files reloaded) applies to the next handshake.
///
/// # Errors
/// Only a failure of the listening socket itself; per-connection failures are counted in
/// `esi_connections_total` and logged at debug level.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
    app: Router,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve(listener, tls, false, app, settings, shutdown).await
}

/// [`serve_https`]; with `client_certs`, a connection whose client presented a certificate
/// chain hands it to each of its requests as an `Arc<crate::authn::ClientCertificate>`
/// extension (made once per connection; nothing is added to requests of connections
/// without one).
async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
    client_certs: bool,
    app: Router,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let max_total = effective_max_connections(settings.max_connections);
    if max_total < settings.max_connections {
        tracing::info!(
            configured = settings.max_connections,
            effective = max_total,
            "connection cap lowered below the open-file limit"
        );
    }
    let counts = Arc::new(Counts {
        per_source: Mutex::new(HashMap::new()),
        total: AtomicUsize::new(0),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(settings.http2_max_header_list_bytes)
        .max_pending_accept_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let settings = Arc::new(settings);
    let (stop_tx, stop_rx) = watch::channel(false);
    let refusals = Arc::new(Throttled::new(Duration::from_secs(10)));
    let accept_errors = Throttled::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    if let Some(suppressed) = accept_errors.tick() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match counts.admit(
            source_key(peer.ip()),
            settings.max_connections_per_source,
            max_total,
        ) {
            Ok(a) => a,
            Err(reason) => {
                METRICS.connections.with_label_values(&[reason]).inc();
                if let Some(suppressed) = refusals.tick() {
                    tracing::warn!(
                        reason,
                        suppressed,
                        "connection refused: too many open connections"
                    );
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            tls: tls.load_full(),
            app: app.clone(),
            builder: builder.clone(),
            settings: settings.clone(),
            stop: stop_rx.clone(),
            client_certs,
        };
        tokio::spawn(async move {
            conn.run(tcp, peer).await;
            drop(admitted);
        });
    }
    // Stop accepting, ask every connection to finish, and wait for them (bounded).
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + settings.shutdown_grace + Duration::from_secs(1);
    while counts.total.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// [`serve_https`] with the TLS config loaded from `files` (`initial`) and reloaded when
/// the files change (checked every `reload_interval`, [`crate::tls::reload_on_change`]).
/// Client certificate chains reach requests when `files` says so
/// ([`crate::tls::ServerTls::hands_client_certificates`]).
///
/// # Errors
/// As [`serve_https`].
pub async fn serve_https_reloading(
    listener: TcpListener,
    files: impl Into<crate::tls::ServerTls>,
    initial: ServerConfig,
    reload_interval: Duration,
    app: Router,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let files: crate::tls::ServerTls = files.into();
    let client_certs = files.hands_client_certificates();
    let tls = Arc::new(ArcSwap::from_pointee(initial));
    tokio::spawn(crate::tls::reload_on_change(
        files,
        tls.clone(),
        reload_interval,
    ));
    serve(listener, tls, client_certs, app, settings, shutdown).await
}

/// What one connection task needs.
struct Connection {
    tls: Arc<ServerConfig>,
    app: Router,
    builder: auto::Builder<TokioExecutor>,
    settings: Arc<ListenerSettings>,
    stop: watch::Receiver<bool>,
    /// Hand the client's certificate chain to requests.
    client_certs: bool,
}

impl Connection {
    async fn run(mut self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let s = self.settings.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let stream = match tokio::time::timeout(s.tls_handshake_timeout, acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                METRICS
                    .connections
                    .with_label_values(&["handshake_error"])
                    .inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                METRICS
                    .connections
                    .with_label_values(&["handshake_timeout"])
                    .inc();
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        // Once per connection; requests only clone the `Arc` (none without a certificate).
        let client_cert = if self.client_certs {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::authn::ClientCertificate::new)
        } else {
            None
        };
        let activity = Arc::new(Activity::new());
        let app = self.app.clone();
        let tracked = activity.clone();
        let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
            tracked.begin();
            let in_flight = InFlight(tracked.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(cert) = &client_cert {
                req.extensions_mut().insert(cert.clone());
            }
            let app = app.clone();
            async move {
                let _in_flight = in_flight;
                app.oneshot(req.map(Body::new)).await
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        loop {
            let deadline = activity.idle_deadline(s.first_request_timeout, s.idle_timeout);
            // While a request is in flight, look again after a while.
            let wake = deadline
                .unwrap_or_else(|| Instant::now() + s.idle_timeout.min(Duration::from_secs(5)));
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep_until(wake) => {
                    let still = activity.idle_deadline(s.first_request_timeout, s.idle_timeout);
                    if still.is_some_and(|d| d <= Instant::now()) {
                        METRICS.connections.with_label_values(&["idle_closed"]).inc();
                        break;
                    }
                }
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        break;
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(s.shutdown_grace, conn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cap_per_source_and_overall_and_give_places_back() {
        let counts = Arc::new(Counts {
            per_source: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.admit(a, 2, 3).unwrap();
        let _second = counts.admit(a, 2, 3).unwrap();
        assert_eq!(counts.admit(a, 2, 3).err(), Some("refused_per_source"));
        let _third = counts.admit(b, 2, 3).unwrap();
        assert_eq!(counts.admit(b, 2, 3).err(), Some("refused_total"));
        drop(first);
        assert!(counts.admit(a, 2, 3).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn only_requests_count_as_activity() {
        let a = Activity::new();
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        // Never served: the first-request deadline.
        assert_eq!(a.idle_deadline(first, idle), Some(a.start + first));
        a.begin();
        assert_eq!(a.idle_deadline(first, idle), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        a.end();
        let d = a.idle_deadline(first, idle).unwrap();
        assert!(d >= a.start + Duration::from_secs(65) && d < a.start + Duration::from_secs(66));
    }

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        if let Some(limit) = open_file_limit() {
            let cap = effective_max_connections(usize::MAX);
            assert!((cap as u64) < limit.max(17), "{cap} vs {limit}");
        }
        assert_eq!(effective_max_connections(1), 1);
    }
}
