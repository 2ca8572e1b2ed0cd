//! Per-federation key state: fetching (discovery → JWKS), caching, single-flight refresh,
//! stale-if-error and fail-closed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use reqwest::Url;
use reqwest::header::ACCEPT;
use rustls_pki_types::CertificateDer;

use super::error::AuthnError;
use super::federation::{Federation, Fetch, parse_ca_bundle_b64};
use super::keys::{JwksError, VerifyKey, parse_jwks, parse_spiffe_bundle};
use super::settings::AuthnSettings;
use super::x509svid::X509Authorities;
use crate::metrics::METRICS;
use crate::resources::ClientCaPolicy;

/// Shortest time a fetched SPIFFE bundle is fresh, whatever its `spiffe_refresh_hint`
/// (a bundle endpoint cannot make the server fetch it more often).
pub const MIN_SPIFFE_REFRESH_SECS: u64 = 30;
/// Longest time a fetched SPIFFE bundle is fresh, whatever its `spiffe_refresh_hint`
/// (a removed key stops verifying within this, plus `jwks_max_stale` while the endpoint is
/// unreachable).
pub const MAX_SPIFFE_REFRESH_SECS: u64 = 3600;

/// Source of unique key-set generations (a verified-token cache entry is bound to one).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// The keys of a federation at one point in time.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) keys: Arc<Vec<VerifyKey>>,
    /// A SPIFFE bundle's `x509-svid` authorities (X.509-SVID chains only).
    pub(crate) x509: Option<Arc<X509Authorities>>,
    /// When fetched (clock seconds); 0 for static keys.
    fetched_at: u64,
    /// `issuer` of the discovery document, when discovery was used.
    discovered_issuer: Option<String>,
    /// How long these keys are fresh when not the server's `jwks_ttl`: a SPIFFE bundle's
    /// `spiffe_refresh_hint`, bounded by [`MIN_SPIFFE_REFRESH_SECS`] and
    /// [`MAX_SPIFFE_REFRESH_SECS`].
    ttl_secs: Option<u64>,
    /// Changes whenever the keys (or the federation) change.
    pub(crate) generation: u64,
}

impl KeySet {
    /// The keys that may verify a token with `kid`: all keys for a token without one; else the
    /// keys with exactly that `kid` when there are any, otherwise the keys without a `kid`
    /// (a JWKS made from `sa.pub`, PEM `publicKeys`: Vault's `jwt_validation_pubkeys` rule).
    /// A key with another `kid` is never a candidate.
    pub(crate) fn candidates<'k>(
        &'k self,
        kid: Option<&'k str>,
    ) -> impl Iterator<Item = &'k VerifyKey> + 'k {
        let exact = kid.is_some_and(|kid| self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        self.keys.iter().filter(move |k| match kid {
            None => true,
            Some(_) if exact => k.kid.as_deref() == kid,
            Some(_) => k.kid.is_none(),
        })
    }

    /// Whether some key may verify a token with `kid` (see [`candidates`](Self::candidates)).
    pub(crate) fn holds(&self, kid: Option<&str>) -> bool {
        self.candidates(kid).next().is_some()
    }
}

/// Why fetching keys failed. Messages hold no token and no credential.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("building the HTTP client failed: {0}")]
    Client(String),
    #[error("request failed: {0}")]
    Http(String),
    #[error("redirect ({0}) not followed")]
    Redirect(u16),
    #[error("unexpected status {0}")]
    Status(u16),
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad discovery document: {0}")]
    Discovery(&'static str),
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// The `ca.crt` a client sent, parsed only if a fetch needs it.
pub(crate) struct ClientCa<'a> {
    b64: Option<&'a str>,
    parsed: OnceLock<Vec<CertificateDer<'static>>>,
}

impl<'a> ClientCa<'a> {
    pub(crate) fn new(b64: Option<&'a str>) -> Self {
        ClientCa {
            b64,
            parsed: OnceLock::new(),
        }
    }

    /// The client's certificates; an unparseable bundle counts as none (it only ever adds trust).
    fn certs(&self) -> &[CertificateDer<'static>] {
        self.parsed.get_or_init(|| match self.b64 {
            Some(b64) if !b64.trim().is_empty() => parse_ca_bundle_b64(b64).unwrap_or_else(|_| {
                tracing::debug!("client ca.crt ignored: not a base64 PEM bundle");
                Vec::new()
            }),
            _ => Vec::new(),
        })
    }

    /// The client certificates `fed`'s `clientCAPolicy` lets us trust for its `url`.
    fn usable_for(&self, fed: &Federation) -> Vec<CertificateDer<'static>> {
        match fed.client_ca_policy {
            ClientCaPolicy::Ignore => Vec::new(),
            ClientCaPolicy::Trust => self.certs().to_vec(),
            ClientCaPolicy::MustMatch => self
                .certs()
                .iter()
                .filter(|c| fed.ca_bundle.contains(c))
                .cloned()
                .collect(),
        }
    }
}

#[derive(Default)]
struct RefreshState {
    /// Clock time of the last fetch attempt.
    last_attempt: Option<u64>,
    /// Clock time of the last failed attempt (cleared by a success). The back-off is per
    /// federation, whatever a request carries: a client cannot buy another fetch by sending
    /// another `ca.crt` (security review finding 4).
    last_failure: Option<u64>,
    /// The client certificates of the last successful fetch: tried first, so a request with a
    /// junk `ca.crt` cannot keep a `Trust` federation from refreshing.
    last_good_extra: Option<Vec<CertificateDer<'static>>>,
}

/// One federation with its key cache.
pub(crate) struct FedState {
    pub(crate) fed: Federation,
    current: ArcSwapOption<KeySet>,
    /// Started fetch attempts (counted under `refresh`, so when it is held every started
    /// attempt has completed): a request that sees it pass its arrival value knows a fetch
    /// begun after it arrived has answered.
    started: AtomicU64,
    /// Requests currently waiting for the next permitted refresh (rotation right after a fetch).
    waiters: AtomicUsize,
    /// Held while fetching: one fetch at a time per federation.
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Why the last fetch failed (cleared by a success), for status; never a key or a body.
    last_error: std::sync::Mutex<Option<String>>,
}

/// What a federation's keys look like now (for its `Ready` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHealth {
    /// Static keys (`jwks`, `publicKeys`): nothing to fetch.
    Static,
    /// Fetched keys, usable; the last fetch succeeded.
    Fetched,
    /// The last fetch failed; `serving` when earlier keys still verify tokens.
    Unreachable {
        /// Why (the fetch error: status, connection or document problem).
        reason: String,
        /// Cached keys are still in use.
        serving: bool,
    },
    /// Not fetched yet (no request has needed them and no probe ran).
    NotFetched,
}

impl FedState {
    pub(crate) fn new(fed: Federation) -> Self {
        let current = fed.static_keys.as_ref().map(|keys| {
            Arc::new(KeySet {
                keys: keys.clone(),
                x509: fed.static_x509.clone(),
                fetched_at: 0,
                discovered_issuer: None,
                ttl_secs: None,
                generation: next_generation(),
            })
        });
        FedState {
            fed,
            current: ArcSwapOption::new(current),
            started: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// The state of this federation's keys at `now`.
    pub(crate) fn health(&self, now: u64, s: &AuthnSettings) -> KeyHealth {
        if !self.fed.fetches() {
            return KeyHealth::Static;
        }
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let serving = self.usable_keys(now, s).is_some();
        match error {
            Some(reason) => KeyHealth::Unreachable { reason, serving },
            None if serving => KeyHealth::Fetched,
            None => KeyHealth::NotFetched,
        }
    }

    /// Fetches the keys when none are fresh and no fetch failed too recently (the same
    /// back-off as requests'), with the client certificates of the last good fetch if any:
    /// so that a federation's status says whether its keys can be fetched before a workload
    /// finds out.
    pub(crate) async fn probe(&self, s: &AuthnSettings) {
        let now = s.clock.now();
        if !self.fed.fetches() || self.fresh_keys(now, s).is_some() {
            return;
        }
        let Ok(mut state) = self.refresh.try_lock() else {
            return; // a fetch is under way
        };
        if !failed_recently(&state, now, s) {
            self.refresh_locked(&mut state, &[], s).await;
        }
    }

    /// Marks a request's arrival: the number of fetch attempts started so far. A fetch that
    /// starts later has seen every key published before the request's token was signed.
    pub(crate) fn arrival(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// The expected `iss` given this key set.
    pub(crate) fn expected_issuer<'s>(&'s self, ks: &'s KeySet) -> Option<&'s str> {
        self.fed
            .issuer
            .as_deref()
            .or(ks.discovered_issuer.as_deref())
            .or(self.fed.url_raw.as_deref())
    }

    fn usable(&self, ks: &KeySet, now: u64, s: &AuthnSettings) -> bool {
        !self.fed.fetches() || age(ks, now) <= ttl(ks, s).saturating_add(s.jwks_max_stale.as_secs())
    }

    /// The current key set if it may still be used at `now` (static keys always may).
    pub(crate) fn usable_keys(&self, now: u64, s: &AuthnSettings) -> Option<Arc<KeySet>> {
        self.current
            .load_full()
            .filter(|ks| self.usable(ks, now, s))
    }

    /// Usable keys, refreshed as needed. With `want_kid`, a key set that holds no candidate
    /// for that kid (see [`KeySet::holds`]) is refreshed, at most once per
    /// `jwks_min_refresh_interval`; the returned set may still lack it.
    ///
    /// Key rotation right after a fetch: a kid is only declared unknown by a fetch that started
    /// after the request arrived. When the last attempt is too recent to fetch again, the
    /// request waits for the next permitted refresh if that is due within
    /// `jwks_rotation_wait` and fewer than `jwks_max_rotation_waiters` requests of this
    /// federation are already waiting; otherwise it is answered with the keys at hand.
    ///
    /// `arrived` is [`arrival`](Self::arrival) read when the request arrived, before any
    /// call of this for the request.
    pub(crate) async fn keys(
        &self,
        want_kid: Option<&str>,
        arrived: u64,
        client_ca: &ClientCa<'_>,
        s: &AuthnSettings,
    ) -> Result<Arc<KeySet>, AuthnError> {
        let now = s.clock.now();
        if !self.fed.fetches() {
            return self.current.load_full().ok_or(AuthnError::KeysUnavailable);
        }
        let usable = self.usable_keys(now, s);
        let has_kid = |ks: &KeySet| want_kid.is_none() || ks.holds(want_kid);
        if let Some(ks) = &usable
            && has_kid(ks)
        {
            if age(ks, now) <= ttl(ks, s) {
                return Ok(ks.clone());
            }
            // Stale but usable: refresh unless someone already is (then serve what we have).
            if let Ok(mut state) = self.refresh.try_lock() {
                let extra = client_ca.usable_for(&self.fed);
                if !failed_recently(&state, now, s) {
                    self.refresh_locked(&mut state, &extra, s).await;
                }
            }
            return Ok(self.usable_keys(now, s).unwrap_or_else(|| ks.clone()));
        }
        // No usable keys, or an unknown kid: wait for (or do) one shared refresh.
        let mut slot: Option<WaiterSlot<'_>> = None;
        loop {
            let mut state = self.refresh.lock().await;
            let now = s.clock.now();
            let usable = self.usable_keys(now, s);
            if let Some(ks) = &usable
                && has_kid(ks)
            {
                return Ok(ks.clone());
            }
            if self.started.load(Ordering::SeqCst) > arrived {
                // A fetch that began after this request arrived has answered.
                return usable.ok_or(AuthnError::KeysUnavailable);
            }
            let extra = client_ca.usable_for(&self.fed);
            let Some(ks) = usable else {
                if !failed_recently(&state, now, s) {
                    self.refresh_locked(&mut state, &extra, s).await;
                }
                drop(state);
                return self.usable_keys(now, s).ok_or(AuthnError::KeysUnavailable);
            };
            let interval = s.jwks_min_refresh_interval.as_secs();
            let since = state.last_attempt.map(|t| now.saturating_sub(t));
            if since.is_none_or(|d| d >= interval) {
                self.refresh_locked(&mut state, &extra, s).await;
                drop(state);
                return Ok(self.usable_keys(now, s).unwrap_or(ks));
            }
            // Too soon after the last attempt: wait for the next permitted one, once, bounded.
            let wait = Duration::from_secs(interval.saturating_sub(since.unwrap_or(0)));
            if slot.is_some() || wait > s.jwks_rotation_wait {
                return Ok(ks);
            }
            slot = WaiterSlot::take(&self.waiters, s.jwks_max_rotation_waiters);
            if slot.is_none() {
                tracing::debug!(
                    federation = self.fed.name.as_str(),
                    "unknown kid: too many requests already waiting for a JWKS refresh"
                );
                return Ok(ks);
            }
            drop(state);
            tracing::debug!(
                federation = self.fed.name.as_str(),
                wait_secs = wait.as_secs(),
                "unknown kid right after a JWKS fetch: waiting for the next permitted refresh"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches and, on success, installs new keys. A failure keeps the cached keys (a bad
    /// client CA or a flaky issuer must not evict keys fetched over a verified connection).
    /// The client certificates of the last successful fetch are tried first, then the
    /// request's own when they differ. The attempt counts as failed from its start, so one
    /// abandoned midway (its request was answered by another federation) still backs off.
    async fn refresh_locked(
        &self,
        state: &mut RefreshState,
        extra: &[CertificateDer<'static>],
        s: &AuthnSettings,
    ) {
        let now = s.clock.now();
        state.last_attempt = Some(now);
        state.last_failure = Some(now);
        self.started.fetch_add(1, Ordering::SeqCst);
        let name = self.fed.name.as_str();
        let mut tries: Vec<Vec<CertificateDer<'static>>> = Vec::with_capacity(2);
        if let Some(good) = &state.last_good_extra
            && good.as_slice() != extra
        {
            tries.push(good.clone());
        }
        tries.push(extra.to_vec());
        for trust in tries {
            match fetch(&self.fed, &trust, s).await {
                Ok(fetched) => {
                    METRICS.jwks_fetches.with_label_values(&[name, "ok"]).inc();
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    self.install(fetched, now);
                    state.last_failure = None;
                    state.last_good_extra = Some(trust);
                    return;
                }
                Err(e) => {
                    METRICS
                        .jwks_fetches
                        .with_label_values(&[name, "error"])
                        .inc();
                    tracing::warn!(federation = name, error = %e, "JWKS fetch failed");
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string().chars().take(512).collect());
                }
            }
        }
    }

    /// Publishes fetched keys; the generation only changes when the keys did.
    fn install(&self, fetched: Fetched, now: u64) {
        let old = self.current.load_full();
        let same = old.as_ref().is_some_and(|o| {
            o.discovered_issuer == fetched.discovered_issuer
                && o.keys.len() == fetched.keys.len()
                && o.keys
                    .iter()
                    .zip(&fetched.keys)
                    .all(|(a, b)| a.fingerprint == b.fingerprint)
                && o.x509.as_ref().map(|x| &x.roots) == fetched.x509.as_ref().map(|x| &x.roots)
        });
        let generation = match (&old, same) {
            (Some(o), true) => o.generation,
            _ => next_generation(),
        };
        tracing::debug!(
            federation = self.fed.name.as_str(),
            keys = fetched.keys.len(),
            changed = !same,
            "JWKS fetched"
        );
        self.current.store(Some(Arc::new(KeySet {
            keys: Arc::new(fetched.keys),
            x509: fetched.x509,
            fetched_at: now,
            discovered_issuer: fetched.discovered_issuer,
            ttl_secs: fetched
                .refresh_hint
                .map(|h| h.clamp(MIN_SPIFFE_REFRESH_SECS, MAX_SPIFFE_REFRESH_SECS)),
            generation,
        })));
    }

    /// Keys usable now without any fetch: static keys, or fetched keys within their TTL.
    pub(crate) fn fresh_keys(&self, now: u64, s: &AuthnSettings) -> Option<Arc<KeySet>> {
        self.current
            .load_full()
            .filter(|ks| !self.fed.fetches() || age(ks, now) <= ttl(ks, s))
    }

    /// Current generation if the keys are usable at `now`.
    pub(crate) fn live_generation(&self, now: u64, s: &AuthnSettings) -> Option<u64> {
        self.usable_keys(now, s).map(|ks| ks.generation)
    }
}

/// A place among a federation's rotation waiters, given back on drop.
struct WaiterSlot<'a>(&'a AtomicUsize);

impl<'a> WaiterSlot<'a> {
    /// A place if fewer than `max` are taken.
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WaiterSlot(count))
    }
}

impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn age(ks: &KeySet, now: u64) -> u64 {
    now.saturating_sub(ks.fetched_at)
}

/// How long `ks` is fresh (seconds).
fn ttl(ks: &KeySet, s: &AuthnSettings) -> u64 {
    ks.ttl_secs.unwrap_or(s.jwks_ttl.as_secs())
}

fn failed_recently(state: &RefreshState, now: u64, s: &AuthnSettings) -> bool {
    state
        .last_failure
        .is_some_and(|t| now.saturating_sub(t) < s.jwks_min_refresh_interval.as_secs())
}

/// Keys as fetched.
pub(crate) struct Fetched {
    keys: Vec<VerifyKey>,
    /// A SPIFFE bundle's `x509-svid` authorities.
    x509: Option<Arc<X509Authorities>>,
    discovered_issuer: Option<String>,
    /// A SPIFFE bundle's `spiffe_refresh_hint` (seconds), unbounded as read.
    refresh_hint: Option<u64>,
}

fn client(
    fed: &Federation,
    extra: &[CertificateDer<'static>],
    s: &AuthnSettings,
) -> Result<reqwest::Client, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    if fed.ca_bundle.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let (_, ignored) = roots.add_parsable_certificates(fed.ca_bundle.iter().cloned());
        if ignored > 0 {
            return Err(FetchError::Client("caBundle certificate unusable".into()));
        }
    }
    roots.add_parsable_certificates(extra.iter().cloned());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .timeout(s.fetch_timeout)
        .connect_timeout(s.fetch_timeout)
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// The error and its causes (TLS failures hide in the sources), without the URL.
fn http_error(e: reqwest::Error) -> FetchError {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Http(msg)
}

/// GET with a size cap. `Ok(None)` for a 4xx answer (the caller may fall back).
async fn get_capped(
    client: &reqwest::Client,
    url: Url,
    max: usize,
) -> Result<Option<Vec<u8>>, FetchError> {
    // Anonymous on purpose: never forward the caller's token or any credential.
    let mut resp = client
        .get(url)
        .header(ACCEPT, "application/json, application/jwk-set+json")
        .send()
        .await
        .map_err(http_error)?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(FetchError::Redirect(status.as_u16()));
    }
    if status.is_client_error() {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `url` with `suffix` appended to its path.
fn with_path(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    let path = format!("{}{}", base.path().trim_end_matches('/'), suffix);
    u.set_path(&path);
    u.set_query(None);
    u.set_fragment(None);
    u
}

/// Re-bases a discovery `jwks_uri` onto `base`: only its path and query are kept, so a
/// discovery document can never send us to another host. A path not already under `base`'s
/// path is put under it (for API servers behind a path-prefix proxy).
pub(crate) fn rebase_jwks_uri(
    base: &Url,
    discovery: &Url,
    jwks_uri: &str,
) -> Result<Url, FetchError> {
    let parsed = discovery
        .join(jwks_uri)
        .map_err(|_| FetchError::Discovery("jwks_uri is not a URL"))?;
    let base_path = base.path().trim_end_matches('/');
    let p = parsed.path();
    let path = if base_path.is_empty() || p == base_path || p.starts_with(&format!("{base_path}/"))
    {
        p.to_owned()
    } else {
        format!("{base_path}{p}")
    };
    let mut out = base.clone();
    out.set_path(&path);
    out.set_query(parsed.query());
    out.set_fragment(None);
    Ok(out)
}

/// The keys of `fed`, from where its kind keeps them ([`Fetch`]).
async fn fetch(
    fed: &Federation,
    extra: &[CertificateDer<'static>],
    s: &AuthnSettings,
) -> Result<Fetched, FetchError> {
    let base = fed
        .url
        .as_ref()
        .ok_or(FetchError::Client("federation has no url".into()))?;
    let client = client(fed, extra, s)?;
    let (jwks_url, discovered_issuer) = match fed.fetch {
        Fetch::KubernetesApi => kubernetes_jwks_url(fed, base, &client, s).await?,
        Fetch::OidcDiscovery => (oidc_jwks_url(fed, base, &client, s).await?, None),
        Fetch::Jwks | Fetch::SpiffeBundle => (base.clone(), None),
    };
    let body = get_capped(&client, jwks_url, s.max_jwks_bytes)
        .await?
        .ok_or(FetchError::Status(404))?;
    let (keys, x509, refresh_hint) = match fed.fetch {
        Fetch::SpiffeBundle => {
            let bundle = parse_spiffe_bundle(&body, s.max_jwks_keys)?;
            let x509 = X509Authorities::new(bundle.x509_authorities).map(Arc::new);
            (bundle.jwt_keys, x509, bundle.refresh_hint)
        }
        _ => (parse_jwks(&body, s.max_jwks_keys)?, None, None),
    };
    Ok(Fetched {
        keys,
        x509,
        discovered_issuer,
        refresh_hint,
    })
}

/// The discovery document at `url`: `Ok(None)` for a 4xx answer.
async fn discovery_document(
    client: &reqwest::Client,
    url: Url,
    s: &AuthnSettings,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, FetchError> {
    match get_capped(client, url, s.max_jwks_bytes).await? {
        Some(body) => match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(doc)) => Ok(Some(doc)),
            _ => Err(FetchError::Discovery("not a JSON object")),
        },
        None => Ok(None),
    }
}

/// A Kubernetes API server's keys: `{url}/.well-known/openid-configuration` → `jwks_uri`
/// re-based onto `url`; without discovery (a 4xx), `{url}/openid/v1/jwks`. With the issuer
/// the document announces.
async fn kubernetes_jwks_url(
    fed: &Federation,
    base: &Url,
    client: &reqwest::Client,
    s: &AuthnSettings,
) -> Result<(Url, Option<String>), FetchError> {
    let discovery_url = with_path(base, "/.well-known/openid-configuration");
    let Some(doc) = discovery_document(client, discovery_url.clone(), s).await? else {
        return Ok((with_path(base, "/openid/v1/jwks"), None));
    };
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or(FetchError::Discovery("no jwks_uri"))?;
    let issuer = match doc.get("issuer") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(i)) if !i.is_empty() => Some(i.clone()),
        Some(_) => return Err(FetchError::Discovery("issuer is not a string")),
    };
    // A pinned issuer must agree with what the cluster itself announces: a mismatch means
    // `url` points at another cluster (or an impostor).
    if let (Some(pinned), Some(announced)) = (fed.issuer.as_deref(), issuer.as_deref())
        && pinned != announced
    {
        return Err(FetchError::Discovery(
            "issuer differs from the federation's issuer",
        ));
    }
    Ok((rebase_jwks_uri(base, &discovery_url, jwks_uri)?, issuer))
}

/// An OIDC issuer's keys (OpenID Connect Discovery 1.0): the document at
/// `{issuer}/.well-known/openid-configuration` (a terminating `/` of the issuer removed)
/// must announce exactly the federation's issuer (§4.3), and its `jwks_uri` must be an
/// `https` URL on the issuer's origin: a discovery document never sends the server to
/// another host (an issuer whose keys live elsewhere is configured with `jwksUri`).
async fn oidc_jwks_url(
    fed: &Federation,
    issuer: &Url,
    client: &reqwest::Client,
    s: &AuthnSettings,
) -> Result<Url, FetchError> {
    let discovery_url = with_path(issuer, "/.well-known/openid-configuration");
    let doc = discovery_document(client, discovery_url, s)
        .await?
        .ok_or(FetchError::Discovery("no discovery document (4xx)"))?;
    match doc.get("issuer") {
        Some(serde_json::Value::String(i)) if Some(i.as_str()) == fed.issuer.as_deref() => {}
        Some(serde_json::Value::String(_)) => {
            return Err(FetchError::Discovery(
                "issuer differs from the federation's issuer",
            ));
        }
        _ => return Err(FetchError::Discovery("no issuer")),
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or(FetchError::Discovery("no jwks_uri"))?;
    let mut url =
        Url::parse(jwks_uri).map_err(|_| FetchError::Discovery("jwks_uri is not a URL"))?;
    if url.scheme() != "https"
        || url.origin() != issuer.origin()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(FetchError::Discovery(
            "jwks_uri is not an https URL on the issuer's host (set jwksUri to name it)",
        ));
    }
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebasing() {
        let base = Url::parse("https://kube.internal:6443").unwrap();
        let disc = with_path(&base, "/.well-known/openid-configuration");
        assert_eq!(
            disc.as_str(),
            "https://kube.internal:6443/.well-known/openid-configuration"
        );
        let r = |b: &Url, u: &str| {
            rebase_jwks_uri(b, &with_path(b, "/.well-known/openid-configuration"), u)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            r(&base, "https://evil.example/openid/v1/jwks?x=1#f"),
            "https://kube.internal:6443/openid/v1/jwks?x=1"
        );
        assert_eq!(r(&base, "/keys"), "https://kube.internal:6443/keys");
        assert_eq!(
            r(&base, "http://user:pw@evil:1/a/../keys"),
            "https://kube.internal:6443/keys"
        );
        let prefixed = Url::parse("https://proxy.example/cluster-a/").unwrap();
        assert_eq!(
            r(&prefixed, "https://evil/openid/v1/jwks"),
            "https://proxy.example/cluster-a/openid/v1/jwks"
        );
        assert_eq!(
            r(&prefixed, "https://evil/cluster-a/keys"),
            "https://proxy.example/cluster-a/keys"
        );
        assert_eq!(
            with_path(&prefixed, "/openid/v1/jwks").as_str(),
            "https://proxy.example/cluster-a/openid/v1/jwks"
        );
    }
}
