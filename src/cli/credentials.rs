//! Generator credentials that live as long as the workload (issue 17).
//!
//! The daemon holds one credential per generator and follows its lease, as Vault Agent
//! and Vault Secrets Operator do: at `--renewal-percent` of the lease it renews it
//! (`POST /v1/credentials/{id}/renew`); only when renewal is refused or falls short (the
//! backend's maximum TTL is near) does it issue a new one, write it, and revoke the old
//! one after `--rotation-grace` (the application may still be using it). On SIGTERM it
//! revokes what it holds. Credentials without a handle but with an expiry (STS, ECR) are
//! re-issued at the same point of their life; credentials without an expiry (Password,
//! UUID, SSHKey) are issued once.
//!
//! Handles (never values) pass from an init step to the daemon through
//! `--credentials-file`: [`Handoff`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::args::GeneratorRef;
use super::error::FetchError;
use super::federated::{FederatedClient, Lease};
use super::value::SecretData;

/// Sooner than this after the last action, nothing is done again (bounds a tiny lease's
/// churn and a misbehaving server's).
const MIN_STEP: Duration = Duration::from_millis(500);
/// Longest wait between two attempts after failures.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Longest lease the keeper schedules by (one year): a larger value from the server or a
/// handoff file is read as this, so no deadline overflows.
const MAX_LEASE_SECS: u64 = 365 * 24 * 3600;
/// Largest handoff file read.
const MAX_HANDOFF_BYTES: u64 = 1 << 20;

/// How the keeper follows leases.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Fraction of a lease after which it is renewed (0.1–0.9).
    pub renew_at: f64,
    /// How long a rotated-out credential stays valid.
    pub grace: Duration,
}

/// One credential the keeper holds.
#[derive(Debug)]
struct Held {
    /// Its value (`None` when adopted from a handoff: the application has it already).
    data: Option<SecretData>,
    lease: Lease,
    /// The lease length granted at issue: what renewals ask for again.
    issued_for: Option<u64>,
    /// When it lapses.
    lapses_at: Option<Instant>,
    /// When to renew or re-issue (`None`: never).
    act_at: Option<Instant>,
    /// A renewal fell short or was refused: the next action issues a new one.
    reissue: bool,
    failures: u32,
}

/// A rotated-out credential waiting for its revocation.
#[derive(Debug)]
struct Retired {
    id: String,
    revoke_at: Instant,
    lapses_at: Option<Instant>,
    failures: u32,
}

/// The credentials of one daemon, by generator.
#[derive(Debug)]
pub struct Keeper {
    settings: Settings,
    held: BTreeMap<GeneratorRef, Held>,
    retired: Vec<Retired>,
    /// Generators whose first issue failed: failures so far and the next attempt.
    pending: BTreeMap<GeneratorRef, (u32, Instant)>,
}

/// Whether a renewal granted less than asked (`got`, `asked` in seconds): the lease's
/// maximum TTL is near, so the next refresh issues a new credential instead. Vault/OpenBao
/// report `lease_duration` as whole seconds, truncated (a renewal of 6 s can read 5 s when
/// the answer took a moment), so one second is forgiven before the 10 % margin. Unknown
/// durations count as short.
fn grants_short(got: Option<u64>, asked: Option<u64>) -> bool {
    match (got, asked) {
        (Some(got), Some(asked)) => {
            got.saturating_add(1).saturating_mul(10) < asked.saturating_mul(9)
        }
        _ => true,
    }
}

/// `seconds` of a lease as a duration, capped at [`MAX_LEASE_SECS`].
fn lease(seconds: u64) -> Duration {
    Duration::from_secs(seconds.min(MAX_LEASE_SECS))
}

/// The wait after `failures` failed attempts: the fetches' backoff (doubling from 1 s,
/// capped, jittered so many Pods do not retry in step).
fn retry_after(failures: u32) -> Duration {
    super::fetch::backoff(failures, Duration::from_secs(1), MAX_RETRY)
}

impl Keeper {
    /// An empty keeper.
    pub fn new(settings: Settings) -> Self {
        Keeper {
            settings,
            held: BTreeMap::new(),
            retired: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    /// When to act on a lease of `seconds` granted at `now`.
    fn act_at(&self, now: Instant, seconds: Option<u64>) -> Option<Instant> {
        let seconds = seconds?;
        let after = lease(seconds).mul_f64(self.settings.renew_at);
        Some(now + after.max(MIN_STEP))
    }

    /// The values of what it holds, by generator.
    pub fn values(&self) -> impl Iterator<Item = (&GeneratorRef, &SecretData)> {
        self.held
            .iter()
            .filter_map(|(g, h)| h.data.as_ref().map(|d| (g, d)))
    }

    /// Handles it holds (live and rotated out): what a SIGTERM revokes.
    pub fn handles(&self) -> usize {
        self.held.values().filter(|h| h.lease.id.is_some()).count() + self.retired.len()
    }

    /// The next time something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|h| h.act_at)
            .chain(self.retired.iter().map(|r| r.revoke_at))
            .chain(self.pending.values().map(|(_, at)| *at))
            .min()
    }

    /// Takes over a credential issued elsewhere (an init step), known by its handle only.
    pub fn adopt(&mut self, generator: GeneratorRef, lease: Lease, lapses_at: Option<Instant>) {
        let now = Instant::now();
        let remaining = lapses_at.map(|at| at.saturating_duration_since(now).as_secs());
        let held = Held {
            data: None,
            issued_for: lease.lease_duration,
            act_at: self.act_at(now, remaining),
            lapses_at,
            lease,
            reissue: false,
            failures: 0,
        };
        if let Some(old) = self.held.insert(generator, held) {
            self.retire(old, now);
        }
    }

    /// Whether it holds a credential of `generator` with this handle.
    pub fn holds(&self, generator: &GeneratorRef, id: &str) -> bool {
        self.held
            .get(generator)
            .is_some_and(|h| h.lease.id.as_deref() == Some(id))
    }

    fn retire(&mut self, old: Held, now: Instant) {
        if let Some(id) = old.lease.id {
            let mut revoke_at = now + self.settings.grace;
            if let Some(lapse) = old.lapses_at {
                revoke_at = revoke_at.min(lapse);
            }
            self.retired.push(Retired {
                id,
                revoke_at,
                lapses_at: old.lapses_at,
                failures: 0,
            });
        }
    }

    /// Files could not be written: rotated-out credentials may still be what the files
    /// hold, so none is revoked before a grace from now (or its own lapse).
    pub fn hold_retired(&mut self, now: Instant) {
        for r in &mut self.retired {
            let mut at = r.revoke_at.max(now + self.settings.grace);
            if let Some(lapse) = r.lapses_at {
                at = at.min(lapse.max(r.revoke_at));
            }
            r.revoke_at = at;
        }
    }

    /// Drops the credential of a generator no longer wanted (revoked after the grace).
    pub fn forget(&mut self, generator: &GeneratorRef) {
        if let Some(old) = self.held.remove(generator) {
            self.retire(old, Instant::now());
        }
    }

    /// Does what is due at `now`: issues what `wanted` lacks, renews or re-issues what
    /// reached its renewal point, revokes rotated-out credentials after their grace.
    /// Returns the generators that could not be served this time (their last value, if
    /// any, is kept).
    pub async fn step(
        &mut self,
        client: &FederatedClient,
        wanted: &[GeneratorRef],
        now: Instant,
    ) -> Vec<(GeneratorRef, FetchError)> {
        let mut failures = Vec::new();
        for g in wanted {
            if self.held.contains_key(g) || self.pending.get(g).is_some_and(|(_, at)| *at > now) {
                continue;
            }
            match self.issue(client, g, now).await {
                Ok(()) => {
                    self.pending.remove(g);
                }
                Err(e) => {
                    let n = self.pending.get(g).map_or(0, |(n, _)| *n).saturating_add(1);
                    self.pending.insert(g.clone(), (n, now + retry_after(n)));
                    failures.push((g.clone(), e));
                }
            }
        }
        let due: Vec<GeneratorRef> = self
            .held
            .iter()
            .filter(|(_, h)| h.act_at.is_some_and(|t| t <= now))
            .map(|(g, _)| g.clone())
            .collect();
        for g in due {
            if let Err(e) = self.refresh(client, &g, now).await {
                failures.push((g, e));
            }
        }
        self.revoke_due(client, now).await;
        failures
    }

    async fn issue(
        &mut self,
        client: &FederatedClient,
        g: &GeneratorRef,
        now: Instant,
    ) -> Result<(), FetchError> {
        let (data, lease) = client.issue_once(g).await?;
        tracing::info!(
            generator = %format_args!("{}/{}/{}", g.namespace, g.kind, g.name),
            lease_seconds = lease.lease_duration.unwrap_or(0),
            renewable = lease.renewable,
            "credential issued"
        );
        let held = Held {
            data: Some(data),
            issued_for: lease.lease_duration,
            lapses_at: lease.lease_duration.map(|s| now + self::lease(s)),
            act_at: self.act_at(now, lease.lease_duration),
            reissue: false,
            failures: 0,
            lease,
        };
        if let Some(old) = self.held.insert(g.clone(), held) {
            self.retire(old, now);
        }
        Ok(())
    }

    /// Renews `g`'s credential, or issues a new one when renewing cannot help.
    async fn refresh(
        &mut self,
        client: &FederatedClient,
        g: &GeneratorRef,
        now: Instant,
    ) -> Result<(), FetchError> {
        let Some(h) = self.held.get_mut(g) else {
            return Ok(());
        };
        let name = format!("{}/{}/{}", g.namespace, g.kind, g.name);
        if !h.reissue
            && h.lease.renewable
            && let Some(id) = h.lease.id.clone()
        {
            let answer = client.renew_once(&id, h.issued_for).await;
            // Deadlines count from the answer, not from before a possibly slow call.
            let now = Instant::now();
            match answer {
                Ok(renewal) => {
                    let seconds = renewal.lease_duration;
                    let short = grants_short(seconds, h.issued_for);
                    h.lapses_at = seconds.map(|s| now + lease(s));
                    h.lease.renewable = renewal.renewable;
                    h.reissue = short || !renewal.renewable;
                    h.failures = 0;
                    h.act_at = seconds
                        .map(|s| now + lease(s).mul_f64(self.settings.renew_at).max(MIN_STEP));
                    tracing::info!(generator = %name, lease_seconds = seconds.unwrap_or(0), last = h.reissue, "credential renewed");
                    return Ok(());
                }
                // 400: a server that refuses the ask itself (an older one's increment
                // bound); renewing again would fail the same way.
                Err(
                    FetchError::NotRenewable | FetchError::NotFound(_) | FetchError::Rejected(400),
                ) => {
                    tracing::info!(generator = %name, "renewal refused; issuing a new credential");
                    h.reissue = true;
                }
                Err(e) => {
                    h.failures = h.failures.saturating_add(1);
                    let next = now + retry_after(h.failures);
                    // Lapsed by the next attempt: renewing cannot help any more; issue anew
                    // then (never a hot loop on a credential that is already gone).
                    if h.lapses_at.is_some_and(|lapse| lapse <= next) {
                        h.reissue = true;
                    }
                    h.act_at = Some(next);
                    return Err(e);
                }
            }
        }
        if h.data.is_none() {
            // Adopted: the application read this value once; a new one would not reach it.
            tracing::warn!(
                generator = %name,
                lapses_in_s = h.lapses_at.map(|t| t.saturating_duration_since(now).as_secs()).unwrap_or(0),
                "the handed-off credential cannot be renewed further; the application needs a restart for a new one"
            );
            h.act_at = None;
            return Ok(());
        }
        let issued = self.issue(client, g, now).await;
        match issued {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(h) = self.held.get_mut(g) {
                    h.failures = h.failures.saturating_add(1);
                    h.act_at = Some(Instant::now() + retry_after(h.failures));
                }
                Err(e)
            }
        }
    }

    async fn revoke_due(&mut self, client: &FederatedClient, now: Instant) {
        let mut keep = Vec::new();
        for mut r in std::mem::take(&mut self.retired) {
            if r.revoke_at > now {
                keep.push(r);
                continue;
            }
            match client.revoke_once(&r.id).await {
                Ok(()) => tracing::info!("rotated-out credential revoked"),
                Err(e) if r.lapses_at.is_some_and(|t| t <= now) => {
                    tracing::info!(error = %e, "rotated-out credential lapsed before it could be revoked");
                }
                Err(e) => {
                    r.failures = r.failures.saturating_add(1);
                    r.revoke_at = now + retry_after(r.failures);
                    tracing::warn!(error = %e, "cannot revoke a rotated-out credential; retrying");
                    keep.push(r);
                }
            }
        }
        self.retired = keep;
    }

    /// Revokes everything it holds (SIGTERM): one attempt each, concurrently, all within
    /// `timeout`. Returns how many could not be revoked (they lapse at their expiry).
    pub async fn release(&mut self, client: &FederatedClient, timeout: Duration) -> usize {
        let ids: Vec<String> = std::mem::take(&mut self.held)
            .into_values()
            .filter_map(|h| h.lease.id)
            .chain(std::mem::take(&mut self.retired).into_iter().map(|r| r.id))
            .collect();
        // All at once within one deadline: Kubernetes kills the container at the end of
        // its termination grace period, whatever is still in flight.
        let all = futures_util::future::join_all(ids.iter().map(|id| client.revoke_once(id)));
        match tokio::time::timeout(timeout, all).await {
            Ok(results) => results
                .into_iter()
                .filter_map(Result::err)
                .inspect(|e| {
                    tracing::warn!(error = %e, "cannot revoke a credential at exit; it lapses at its expiry")
                })
                .count(),
            Err(_) => {
                tracing::warn!("revoking credentials at exit timed out; they lapse at their expiry");
                ids.len()
            }
        }
    }
}

/// One handed-off credential: its generator, handle and lease, never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandedOff {
    /// `NAMESPACE/KIND/NAME`.
    pub generator: String,
    /// The handle and lease.
    #[serde(flatten)]
    pub lease: Lease,
    /// When it lapses, seconds since the epoch (init and daemon share the Pod's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// The `--credentials-file` content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The credentials an init step issued.
    pub credentials: Vec<HandedOff>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Handoff {
    /// Adds an issued credential (those without a handle need nothing after init).
    pub fn push(&mut self, g: &GeneratorRef, lease: &Lease) {
        if lease.id.is_none() {
            return;
        }
        self.credentials.push(HandedOff {
            generator: format!("{}/{}/{}", g.namespace, g.kind, g.name),
            lease: lease.clone(),
            expires_at: lease.lease_duration.map(|s| unix_now().saturating_add(s)),
        });
    }

    /// Writes the file (mode 0600, replaced atomically).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        super::files::write_if_changed(path, &text).map(drop)
    }

    /// Reads the file: `Ok(None)` while it does not exist yet.
    pub fn read(path: &Path) -> Result<Option<Handoff>, String> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if meta.len() > MAX_HANDOFF_BYTES {
            return Err("file too large".into());
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| "not a credentials file".to_string())
    }

    /// Each entry's generator and when it lapses on this process's clock; one per
    /// generator (the last written wins).
    pub fn entries(&self) -> Vec<(GeneratorRef, Lease, Option<Instant>)> {
        let now_unix = unix_now();
        let now = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        let mut out: Vec<_> = self
            .credentials
            .iter()
            .rev()
            .filter(|c| seen.insert(c.generator.as_str()))
            .filter_map(|c| {
                let mut parts = c.generator.splitn(3, '/');
                let g = GeneratorRef {
                    namespace: parts.next()?.to_string(),
                    kind: parts.next()?.to_string(),
                    name: parts.next()?.to_string(),
                };
                let lapses = c
                    .expires_at
                    .map(|at| now + lease(at.saturating_sub(now_unix)));
                Some((g, c.lease.clone(), lapses))
            })
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    /// A truncated second is not the maximum TTL; a real cut is.
    #[test]
    fn a_renewal_is_short_only_when_it_grants_clearly_less() {
        use super::grants_short;
        assert!(!grants_short(Some(5), Some(6)), "6 s read as 5 s");
        assert!(!grants_short(Some(6), Some(6)));
        assert!(!grants_short(Some(3599), Some(3600)));
        assert!(grants_short(Some(4), Some(6)));
        assert!(grants_short(Some(3000), Some(3600)));
        assert!(grants_short(None, Some(6)));
        assert!(grants_short(Some(6), None));
    }

    use super::*;

    fn keeper() -> Keeper {
        Keeper::new(Settings {
            renew_at: 0.67,
            grace: Duration::from_secs(30),
        })
    }

    fn g(name: &str) -> GeneratorRef {
        GeneratorRef {
            namespace: "apps".into(),
            kind: "VaultDynamicSecret".into(),
            name: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_point_follows_the_lease() {
        let k = keeper();
        let now = Instant::now();
        assert_eq!(
            k.act_at(now, Some(300)),
            Some(now + Duration::from_secs(201))
        );
        // A tiny lease is not acted on in a hot loop; no expiry means never.
        assert_eq!(k.act_at(now, Some(0)), Some(now + MIN_STEP));
        assert_eq!(k.act_at(now, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rotated_out_credentials_wait_for_the_grace_or_their_lapse() {
        let mut k = keeper();
        let now = Instant::now();
        let lease = |id: &str| Lease {
            id: Some(id.into()),
            lease_duration: Some(3600),
            renewable: true,
        };
        k.adopt(g("db"), lease("a"), Some(now + Duration::from_secs(3600)));
        assert!(k.holds(&g("db"), "a"));
        k.adopt(g("db"), lease("b"), Some(now + Duration::from_secs(3600)));
        assert_eq!(k.handles(), 2);
        assert_eq!(k.retired[0].revoke_at, now + Duration::from_secs(30));
        // The new value could not be written: the old one is kept a grace from then.
        let later = now + Duration::from_secs(100);
        k.hold_retired(later);
        assert_eq!(k.retired[0].revoke_at, later + Duration::from_secs(30));
        // One that lapses sooner than the grace is due at its lapse.
        k.adopt(g("db"), lease("c"), Some(now + Duration::from_secs(5)));
        k.forget(&g("db"));
        assert_eq!(
            k.retired.last().unwrap().revoke_at,
            now + Duration::from_secs(5)
        );
        assert_eq!(k.next_deadline(), Some(now + Duration::from_secs(5)));
        // Adopted values are not re-exposed.
        assert_eq!(k.values().count(), 0);
    }

    #[tokio::test]
    async fn a_failed_first_issue_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let client = FederatedClient::new(
            "https://127.0.0.1:1",
            None,
            super::super::args::ClientCredential::Bearer(super::super::args::TokenSource::File(
                dir.path().join("no-token"),
            )),
            &dir.path().join("no-ca"),
            false,
        )
        .unwrap();
        let mut k = keeper();
        let now = Instant::now();
        let failed = k.step(&client, &[g("db")], now).await;
        assert_eq!(failed.len(), 1);
        // Not tried again before its retry time, which the daemon sleeps until.
        assert!(k.step(&client, &[g("db")], now).await.is_empty());
        let first = k.next_deadline().unwrap() - now;
        let window = |lo, hi| Duration::from_secs(lo)..=Duration::from_secs(hi);
        assert!(window(1, 2).contains(&first), "{first:?}");
        let later = now + Duration::from_secs(2);
        let failed = k.step(&client, &[g("db")], later).await;
        assert_eq!(failed.len(), 1);
        let second = k.next_deadline().unwrap() - later;
        assert!(window(2, 4).contains(&second), "{second:?}");
        assert_eq!(k.values().count(), 0);
    }

    #[test]
    fn handoff_holds_handles_never_values() {
        let mut h = Handoff::default();
        h.push(
            &g("db"),
            &Lease {
                id: Some("3f0a1c5e-0000-4000-8000-000000000001".into()),
                lease_duration: Some(60),
                renewable: true,
            },
        );
        // Nothing to hand off without a handle.
        h.push(&g("pw"), &Lease::default());
        assert_eq!(h.credentials.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handles.json");
        assert_eq!(Handoff::read(&path).unwrap(), None);
        h.write(&path).unwrap();
        let back = Handoff::read(&path).unwrap().unwrap();
        assert_eq!(back, h);
        let entries = back.entries();
        assert_eq!(entries[0].0, g("db"));
        assert!(entries[0].2.is_some());
        // Two handles for one generator: only the last counts (no adopt/retire flip-flop).
        let mut twice = back.clone();
        twice.push(
            &g("db"),
            &Lease {
                id: Some("3f0a1c5e-0000-4000-8000-000000000002".into()),
                lease_duration: Some(60),
                renewable: true,
            },
        );
        let entries = twice.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].1.id.as_deref(),
            Some("3f0a1c5e-0000-4000-8000-000000000002")
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(Handoff::read(&path).is_err());
    }
}
