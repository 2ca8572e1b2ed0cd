//! The authenticator: federations, key caches and the verified-token cache.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::clock::Clock;
use super::error::AuthnError;
use super::federation::Federation;
use super::identity::Identity;
use super::jwks::{ClientCa, FedState, KeyHealth, KeySet};
use super::settings::AuthnSettings;
use super::spiffe::{could_be_a_served_workload, parse_workload_id};
use super::token::{self, ParsedToken};
use super::x509svid::{
    ClientCertificate, RefusalBasis, RefusedChain, VerifiedChain, X509SvidError,
    chain_within_bounds, check_leaf, check_signers, earliest_not_after, next_validity_change,
};
use crate::metrics::METRICS;

/// Longest a verified token stays cached, whatever its `exp` (bounds the memory of long-lived tokens).
const MAX_TOKEN_CACHE_SECS: u64 = 3600;

/// A verified token: its identity, bound to the key set that verified it and to the
/// federations it was verified among (`epoch`).
#[derive(Clone)]
struct CachedToken {
    identity: Arc<Identity>,
    exp: u64,
    generation: u64,
    /// [`Authenticator::epoch`] when verification began: a federation added or changed
    /// since may route the token elsewhere, or refuse it ([`spiffe_routed`]).
    epoch: u64,
}

/// Expires a cached token when the token itself expires (per entry).
struct TokenExpiry {
    clock: Clock,
    leeway: u64,
}

impl Expiry<[u8; 32], CachedToken> for TokenExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &CachedToken, _: Instant) -> Option<Duration> {
        let left = v
            .exp
            .saturating_add(self.leeway)
            .saturating_sub(self.clock.now());
        Some(Duration::from_secs(left.min(MAX_TOKEN_CACHE_SECS)))
    }
}

/// Verifies ServiceAccount tokens against the configured federations. Share it in an `Arc`;
/// [`set_federations`](Self::set_federations) swaps the configuration without blocking requests.
pub struct Authenticator {
    settings: AuthnSettings,
    /// Sorted by name: the order federations are tried in.
    federations: ArcSwap<Vec<Arc<FedState>>>,
    /// sha256(token) → identity. Only successes are cached; the token itself is never stored.
    tokens: moka::sync::Cache<[u8; 32], CachedToken>,
    /// Serializes reloads (each reads the previous set to keep unchanged federations' caches).
    reload: std::sync::Mutex<()>,
    /// Counts reloads that added or changed a federation (bumped after the new set is
    /// stored): a verified token cached under an older count is verified again, so that a
    /// verification still running across such a reload cannot cache what the new set
    /// would refuse (`invalidate_all` only drops what was cached before it).
    epoch: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .federations
            .load()
            .iter()
            .map(|s| s.fed.name.clone())
            .collect();
        f.debug_struct("Authenticator")
            .field("federations", &names)
            .field("cached_tokens", &self.tokens.entry_count())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator without federations (every token is rejected until
    /// [`set_federations`](Self::set_federations)).
    pub fn new(settings: AuthnSettings) -> Self {
        let tokens = moka::sync::Cache::builder()
            .max_capacity(settings.token_cache_capacity)
            .expire_after(TokenExpiry {
                clock: settings.clock.clone(),
                leeway: settings.leeway_secs,
            })
            .support_invalidation_closures()
            .build();
        Authenticator {
            settings,
            federations: ArcSwap::from_pointee(Vec::new()),
            tokens,
            reload: std::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
        }
    }

    /// Replace the set of federations (called on every config reload). Caches (keys, verified
    /// tokens) of federations whose config is unchanged are kept; those of changed/removed
    /// federations are dropped. Adding or changing a federation drops every cached token, since
    /// it may now match tokens (by issuer) that another federation verified before, and
    /// outdates what a verification still running across the reload caches (its answer is
    /// used once, then verified again against the new set).
    pub fn set_federations(&self, federations: Vec<Federation>) {
        // A poisoned lock only means another reload panicked; the data it guards is `()`.
        let _guard = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.federations.load_full();
        let mut federations = federations;
        federations.sort_by(|a, b| a.name.cmp(&b.name));
        let mut names = HashSet::new();
        let mut next = Vec::with_capacity(federations.len());
        let mut added_or_changed = false;
        for fed in federations {
            if !names.insert(fed.name.clone()) {
                tracing::warn!(
                    federation = fed.name.as_str(),
                    "duplicate federation name ignored"
                );
                continue;
            }
            match old.iter().find(|s| s.fed == fed) {
                Some(kept) => next.push(kept.clone()),
                None => {
                    added_or_changed = true;
                    next.push(Arc::new(FedState::new(fed)));
                }
            }
        }
        let removed: HashSet<String> = old
            .iter()
            .filter(|s| !next.iter().any(|n| Arc::ptr_eq(n, s)))
            .map(|s| s.fed.name.clone())
            .collect();
        self.federations.store(Arc::new(next));
        if added_or_changed {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        // Stale entries are also rejected lazily (generation check on every hit); this only
        // frees their memory early.
        let drop_all = added_or_changed
            || (!removed.is_empty()
                && self
                    .tokens
                    .invalidate_entries_if(move |_, v| removed.contains(&v.identity.federation))
                    .is_err());
        if drop_all {
            self.tokens.invalidate_all();
        }
    }

    /// The state of every federation's keys, by name (for status).
    pub fn key_health(&self) -> Vec<(String, KeyHealth)> {
        let now = self.settings.clock.now();
        self.federations
            .load()
            .iter()
            .map(|f| (f.fed.name.clone(), f.health(now, &self.settings)))
            .collect()
    }

    /// Fetches the keys of every federation that has none fresh (see `FedState::probe`),
    /// concurrently; each bounded by the fetch timeout.
    pub async fn probe_keys(&self) {
        let federations = self.federations.load_full();
        futures_util::future::join_all(federations.iter().map(|f| f.probe(&self.settings))).await;
    }

    /// Verify a bearer token. `client_ca_b64` is the optional `ca.crt` from the request body
    /// (base64 of a PEM bundle); it is used, per federation policy, only to fetch keys.
    pub async fn authenticate(
        &self,
        token: &str,
        client_ca_b64: Option<&str>,
    ) -> Result<Identity, AuthnError> {
        self.authenticate_shared(token, client_ca_b64)
            .await
            .map(Arc::unwrap_or_clone)
    }

    /// [`Authenticator::authenticate`], the identity shared with the verified-token cache
    /// (no copy on a cache hit: what the request path uses).
    ///
    /// # Errors
    /// As [`Authenticator::authenticate`].
    pub async fn authenticate_shared(
        &self,
        token: &str,
        client_ca_b64: Option<&str>,
    ) -> Result<Arc<Identity>, AuthnError> {
        let result = self.authenticate_inner(token, client_ca_b64).await;
        match &result {
            Ok((_, cached)) => {
                let outcome = if *cached { "cached" } else { "ok" };
                METRICS.authentications.with_label_values(&[outcome]).inc();
            }
            Err(e) => METRICS.authentications.with_label_values(&[e.kind()]).inc(),
        }
        result.map(|(id, _)| id)
    }

    async fn authenticate_inner(
        &self,
        token: &str,
        client_ca_b64: Option<&str>,
    ) -> Result<(Arc<Identity>, bool), AuthnError> {
        let s = &self.settings;
        if token.len() > s.max_token_bytes {
            tracing::debug!(kind = "too_large", "authentication failed");
            return Err(AuthnError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = s.clock.now();
        if let Some(hit) = self.tokens.get(&digest) {
            // Re-check against the clock (moka's expiry runs on its own clock) and that the
            // keys that verified it are still the federation's usable keys.
            if now <= hit.exp.saturating_add(s.leeway_secs)
                && hit.epoch == self.epoch.load(Ordering::SeqCst)
                && self.live_generation(&hit.identity.federation, now) == Some(hit.generation)
            {
                return Ok((hit.identity.clone(), true));
            }
            self.tokens.invalidate(&digest);
        }
        // Read before the federations are (`verify`): a reload between the two only makes
        // this entry stale, never a stale entry current.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let parsed = match token::parse(token, s.max_token_bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(kind = e.kind(), "authentication failed");
                return Err(e);
            }
        };
        match self.verify(&parsed, client_ca_b64, now).await {
            Ok((identity, generation)) => {
                let identity = Arc::new(identity);
                // Legacy tokens (no `exp`) are verified every time, never cached.
                if let Some(exp) = identity.expires_at {
                    self.tokens.insert(
                        digest,
                        CachedToken {
                            identity: identity.clone(),
                            exp,
                            generation,
                            epoch,
                        },
                    );
                }
                Ok((identity, false))
            }
            Err((e, federation)) => {
                tracing::debug!(
                    kind = e.kind(),
                    federation = federation.as_deref().unwrap_or(""),
                    iss = parsed.iss_or_empty(),
                    kid = parsed.kid.as_deref().unwrap_or(""),
                    "authentication failed"
                );
                Err(e)
            }
        }
    }

    /// Whether a verified result for `token` is cached (tests only).
    #[cfg(test)]
    pub(crate) fn is_cached(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.contains_key(&digest)
    }

    fn live_generation(&self, federation: &str, now: u64) -> Option<u64> {
        self.federations
            .load()
            .iter()
            .find(|s| s.fed.name == federation)
            .and_then(|s| s.live_generation(now, &self.settings))
    }

    /// Verifies `t` with the federations of its issuer — or, when its `sub` is a SPIFFE ID of
    /// a served trust domain, with that trust domain's federations only ([`spiffe_routed`]).
    /// First, without waiting on anything,
    /// every federation that already holds fresh keys for the token's `kid` (static keys, or
    /// fetched within their TTL) is tried, in name order. Only when none verifies it are the
    /// federations asked for keys, concurrently, each with its own fetch, timeout and
    /// back-off; the first that verifies answers, so one unreachable federation sharing the
    /// issuer never holds up another (security review finding 4). On failure, returns the
    /// error that got furthest (a claim error after a verified signature beats "unknown kid").
    async fn verify(
        &self,
        t: &ParsedToken<'_>,
        client_ca_b64: Option<&str>,
        now: u64,
    ) -> Result<(Identity, u64), (AuthnError, Option<String>)> {
        let s = &self.settings;
        let federations = self.federations.load_full();
        let spiffe_routed = spiffe_routed(&federations, t);
        let eligible = |st: &FedState| {
            t.may_be_of(&st.fed) && (!spiffe_routed || st.fed.trust_domain().is_some())
        };
        for st in federations.iter() {
            if !eligible(st) {
                continue;
            }
            let Some(ks) = st.fresh_keys(now, s) else {
                continue;
            };
            if !issuer_matches(st, &ks, t) || !ks.holds(t.kid.as_deref()) {
                continue;
            }
            if let Ok(found) = self.verify_with(&federations, st, &ks, t, now) {
                return Ok(found);
            }
        }

        let client_ca = ClientCa::new(client_ca_b64);
        let mut attempts: FuturesUnordered<_> = federations
            .iter()
            .filter(|st| eligible(st))
            .map(|st| {
                let arrived = st.arrival();
                let client_ca = &client_ca;
                let federations = &federations;
                async move {
                    self.verify_fetching(federations, st, arrived, client_ca, t, now)
                        .await
                        .map_err(|e| e.map(|e| (e, st.fed.name.clone())))
                }
            })
            .collect();
        let mut best: Option<(AuthnError, Option<String>)> = None;
        while let Some(outcome) = attempts.next().await {
            match outcome {
                Ok(found) => return Ok(found),
                Err(Some((e, fed))) => {
                    if best.as_ref().is_none_or(|(b, _)| e.stage() > b.stage()) {
                        best = Some((e, Some(fed)));
                    }
                }
                Err(None) => {}
            }
        }
        Err(best.unwrap_or((AuthnError::UnknownIssuer, None)))
    }

    /// One federation's attempt, fetching keys as needed. `Err(None)`: the federation is not
    /// the token's issuer (known once its discovery document is).
    async fn verify_fetching(
        &self,
        federations: &[Arc<FedState>],
        st: &FedState,
        arrived: u64,
        client_ca: &ClientCa<'_>,
        t: &ParsedToken<'_>,
        now: u64,
    ) -> Result<(Identity, u64), Option<AuthnError>> {
        let s = &self.settings;
        if st.fed.configured_issuer().is_none() && st.fed.trust_domain().is_none() {
            // The issuer comes from discovery: we need the keys to know it.
            let ks = st.keys(None, arrived, client_ca, s).await?;
            if !issuer_matches(st, &ks, t) {
                return Err(None);
            }
        }
        let ks = st.keys(t.kid.as_deref(), arrived, client_ca, s).await?;
        if !issuer_matches(st, &ks, t) {
            return Err(None);
        }
        self.verify_with(federations, st, &ks, t, now).map_err(Some)
    }

    /// Signature with the key set's candidates for the token's `kid`, then the claims; a
    /// subject another kind proved that could be read as a served trust domain's workload
    /// is refused ([`could_be_a_served_workload`]).
    fn verify_with(
        &self,
        federations: &[Arc<FedState>],
        st: &FedState,
        ks: &KeySet,
        t: &ParsedToken<'_>,
        now: u64,
    ) -> Result<(Identity, u64), AuthnError> {
        let s = &self.settings;
        let mut candidates = ks.candidates(t.kid.as_deref()).peekable();
        if candidates.peek().is_none() {
            return Err(AuthnError::UnknownKeyId);
        }
        let mut usable = candidates.filter(|k| k.accepts(t.alg)).peekable();
        if usable.peek().is_none() {
            return Err(AuthnError::KeyAlgorithmMismatch);
        }
        if !usable.any(|k| t.verify_signature(k)) {
            return Err(AuthnError::BadSignature);
        }
        let identity =
            t.check_claims(&st.fed, now, s.leeway_secs, s.max_token_lifetime.as_secs())?;
        if st.fed.trust_domain().is_none()
            && could_be_a_served_workload(
                federations.iter().filter_map(|st| st.fed.trust_domain()),
                &identity.subject,
            )
        {
            return Err(AuthnError::BadSubject);
        }
        Ok((identity, ks.generation))
    }
}

/// Whether only `SpiffeFederation`s may verify `t`: its `sub` is a SPIFFE ID of a trust
/// domain that a `SpiffeFederation` serves. Such a token could also match another kind's
/// federation by `iss` (SPIRE's OIDC discovery provider publishes the JWT-SVID keys as an
/// OIDC issuer); without this rule the identity it proves (a `SpiffeWorkload` or an
/// `OidcSubject`) would depend on federation names and on which key fetch answers first.
/// The trust domain's bundle is the only authority for its SPIFFE IDs (JWT-SVID §3): a token
/// of another issuer whose `sub` names one of its workloads is refused, never taken as an
/// OIDC subject that looks like that workload in audit lines and the ledger. Lookalikes
/// this does not route (`SPIFFE://…`, `spiffe://Example.org/…`, a trailing `/`, `%`, a
/// port, no path) are refused by [`could_be_a_served_workload`].
fn spiffe_routed(federations: &[Arc<FedState>], t: &ParsedToken<'_>) -> bool {
    t.spiffe_trust_domain.as_deref().is_some_and(|td| {
        federations
            .iter()
            .any(|st| st.fed.trust_domain() == Some(td))
    })
}

/// X.509-SVIDs presented as TLS client certificates (see [`super::x509svid`]).
impl Authenticator {
    /// Verifies a TLS client certificate presented as an X.509-SVID against the current
    /// bundle of the `SpiffeFederation` of its URI SAN's trust domain (every federation
    /// with that trust domain, in name order; the first that verifies answers). The identity
    /// is the one a JWT-SVID with the same SPIFFE ID gives, expiring at the chain's earliest
    /// `notAfter`. A success is remembered by `cert` (its connection's next requests), bound to
    /// the key set that verified it and to the federations it was verified among, as a cached
    /// token is: a federation added or changed since makes the next request verify again.
    /// A definitive refusal is remembered too (counted and logged on each request as a fresh
    /// one), bound to the federations of the trust domain, their key sets and the next time a
    /// certificate of the chain or of the authorities becomes valid or expires; a refusal
    /// because keys could not be had is not.
    ///
    /// # Errors
    /// [`AuthnError::X509Svid`] naming the rule broken; [`AuthnError::KeysUnavailable`]
    /// when the bundle cannot be had.
    pub async fn authenticate_x509(
        &self,
        cert: &ClientCertificate,
    ) -> Result<Arc<Identity>, AuthnError> {
        let result = self.authenticate_x509_inner(cert).await;
        match &result {
            Ok((_, cached)) => {
                let outcome = if *cached { "cached" } else { "ok" };
                METRICS.authentications.with_label_values(&[outcome]).inc();
            }
            Err(e) => METRICS.authentications.with_label_values(&[e.kind()]).inc(),
        }
        result.map(|(id, _)| id)
    }

    async fn authenticate_x509_inner(
        &self,
        cert: &ClientCertificate,
    ) -> Result<(Arc<Identity>, bool), AuthnError> {
        let now = self.settings.clock.now();
        if let Some(hit) = cert.verified() {
            // Certificates get no leeway: valid up to `notAfter` included, as webpki's check.
            // Only while the keys are fresh: a connection can live long, and stale keys are
            // refreshed by the verification below (a cached token's short life bounds it
            // instead).
            if now <= hit.not_after
                && hit.epoch == self.epoch.load(Ordering::SeqCst)
                && self.fresh_generation(&hit.identity.federation, now) == Some(hit.generation)
            {
                return Ok((hit.identity.clone(), true));
            }
            cert.set_verified(None);
        }
        if let Some(no) = cert.refused() {
            if self.refusal_holds(&no, now) {
                log_x509_refusal(no.error.kind(), no.federation.as_deref());
                return Err(AuthnError::X509Svid(no.error));
            }
            cert.set_refused(None);
        }
        // Read before the federations are, as for a token (`authenticate_inner`).
        let epoch = self.epoch.load(Ordering::SeqCst);
        match self.verify_x509(cert, now).await {
            Ok((identity, generation)) => {
                let identity = Arc::new(identity);
                cert.set_verified(Some(VerifiedChain {
                    identity: identity.clone(),
                    generation,
                    not_after: identity.expires_at.unwrap_or(0),
                    epoch,
                }));
                Ok((identity, false))
            }
            Err((e, federation, basis)) => {
                log_x509_refusal(e.kind(), federation.as_deref());
                if let AuthnError::X509Svid(error) = e {
                    let bundles = match basis {
                        Basis::Transient => None,
                        Basis::Chain => Some(None),
                        Basis::Bundles { generations, until } => Some(Some(RefusalBasis {
                            epoch,
                            generations,
                            from: now,
                            until,
                        })),
                    };
                    if let Some(bundles) = bundles {
                        cert.set_refused(Some(RefusedChain {
                            error,
                            federation,
                            bundles,
                        }));
                    }
                }
                Err(e)
            }
        }
    }

    /// Whether a remembered refusal still holds at `now`: it depended on the chain alone,
    /// or the federation set, every federation's key set (fresh) and the validity of every
    /// certificate involved are as they were.
    fn refusal_holds(&self, no: &RefusedChain, now: u64) -> bool {
        let Some(b) = &no.bundles else {
            return true;
        };
        b.from <= now
            && now < b.until
            && b.epoch == self.epoch.load(Ordering::SeqCst)
            && b.generations
                .iter()
                .all(|(name, g)| self.fresh_generation(name, now) == Some(*g))
    }

    /// The generation of `federation`'s keys if they are fresh at `now` (no fetch due).
    fn fresh_generation(&self, federation: &str, now: u64) -> Option<u64> {
        self.federations
            .load()
            .iter()
            .find(|s| s.fed.name == federation)
            .and_then(|s| s.fresh_keys(now, &self.settings))
            .map(|ks| ks.generation)
    }

    async fn verify_x509(
        &self,
        cert: &ClientCertificate,
        now: u64,
    ) -> Result<(Identity, u64), (AuthnError, Option<String>, Basis)> {
        let refused = |e: X509SvidError| (AuthnError::X509Svid(e), None, Basis::Chain);
        let chain = cert.chain();
        let bytes = chain.iter().map(|c| c.len()).sum();
        if !chain_within_bounds(chain.len(), bytes) {
            return Err(refused(X509SvidError::ChainTooLarge));
        }
        let leaf = chain.first().ok_or(refused(X509SvidError::Malformed))?;
        let leaf = check_leaf(leaf).map_err(refused)?;
        check_signers(chain.get(1..).unwrap_or_default()).map_err(refused)?;
        let trust_domain = parse_workload_id(&leaf.spiffe_id)
            .map_err(|_| refused(X509SvidError::BadSpiffeId))?
            .trust_domain;
        let federations = self.federations.load_full();
        let mut first_error = None;
        // What a refusal depends on: every federation tried, by its keys' generation, and
        // the validity of the chain and of every authority, at `now`.
        let mut generations = Vec::new();
        let mut until = next_validity_change(chain, now);
        let mut definitive = true;
        for st in federations
            .iter()
            .filter(|st| st.fed.trust_domain() == Some(trust_domain))
        {
            let name = || Some(st.fed.name.clone());
            let ks = match st
                .keys(None, st.arrival(), &ClientCa::new(None), &self.settings)
                .await
            {
                Ok(ks) => ks,
                Err(e) => {
                    definitive = false;
                    first_error.get_or_insert((e, name()));
                    continue;
                }
            };
            generations.push((st.fed.name.clone(), ks.generation));
            let mut attempt = || {
                let authorities = ks.x509.as_ref().ok_or(X509SvidError::NoAuthorities)?;
                until = until.min(authorities.next_validity_change(now));
                cert.count_validation();
                let anchors_not_after = authorities.verify(chain, now)?;
                let mut identity = Identity::of_spiffe_workload(&st.fed.name, &leaf.spiffe_id)
                    .ok_or(X509SvidError::BadSpiffeId)?;
                identity.expires_at = Some(
                    earliest_not_after(chain)
                        .min(leaf.not_after)
                        .min(anchors_not_after),
                );
                Ok::<_, X509SvidError>(identity)
            };
            match attempt() {
                Ok(identity) => return Ok((identity, ks.generation)),
                Err(e) => {
                    first_error.get_or_insert((AuthnError::X509Svid(e), name()));
                }
            }
        }
        let basis = if definitive {
            Basis::Bundles { generations, until }
        } else {
            Basis::Transient
        };
        let (e, federation) = first_error.unwrap_or((
            AuthnError::X509Svid(X509SvidError::UnknownTrustDomain),
            None,
        ));
        Err((e, federation, basis))
    }
}

/// What an X.509-SVID's refusal depends on, so whether it may be remembered.
enum Basis {
    /// A key set could not be had: never remembered.
    Transient,
    /// The chain alone (size, leaf and signer rules).
    Chain,
    /// The federations of the trust domain (name, key set generation; none: no federation
    /// has it) and the validity of the certificates involved, up to `until` (excluded).
    Bundles {
        generations: Vec<(String, u64)>,
        until: u64,
    },
}

fn log_x509_refusal(kind: &'static str, federation: Option<&str>) {
    tracing::debug!(
        kind,
        federation = federation.unwrap_or(""),
        credential = "x509-svid",
        "authentication failed"
    );
}

/// Whether the token is the issuer's that `ks` belongs to: a `SpiffeFederation`'s tokens
/// were routed by trust domain ([`ParsedToken::may_be_of`]) and have no issuer to match;
/// any other federation's must carry exactly the issuer it expects with these keys.
fn issuer_matches(st: &FedState, ks: &KeySet, t: &ParsedToken<'_>) -> bool {
    st.fed.trust_domain().is_some()
        || st
            .expected_issuer(ks)
            .is_some_and(|i| Some(i) == t.iss.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_and_debug_without_secrets() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
        assert_send_sync::<Arc<Authenticator>>();
        let a = Authenticator::new(AuthnSettings::default());
        assert!(format!("{a:?}").contains("federations"));
        let d = AuthnSettings::default();
        assert_eq!(d.leeway_secs, 60);
        assert_eq!(d.max_token_bytes, 16 * 1024);
        assert_eq!(d.jwks_ttl, Duration::from_secs(300));
        assert_eq!(d.jwks_max_stale, Duration::from_secs(3600));
        assert_eq!(d.jwks_min_refresh_interval, Duration::from_secs(10));
        assert_eq!(d.fetch_timeout, Duration::from_secs(5));
        assert_eq!(d.max_jwks_bytes, 256 * 1024);
        assert_eq!(d.max_jwks_keys, 64);
        assert_eq!(d.token_cache_capacity, 100_000);
    }
}
