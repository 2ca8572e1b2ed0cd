//! What happens to an issued credential: recorded before it is answered, revoked on
//! request or at expiry, retried until revocation succeeds.
//!
//! Every step writes an audit line on the `esi::audit` target (never a value or a
//! revocation state: only its fingerprint) and counts `esi_credentials_issued_total` /
//! `esi_credentials_revoked_total` by generator kind and outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{GeneratorRef, Holder, Ledger, LedgerEntry, LedgerError};
use crate::config::Snapshot;
use crate::generators::{Generated, Generator, GeneratorError, Renewed, unix_now};
use crate::metrics::METRICS;
use crate::resources::GeneratorKey;

/// Longest pause between two revocation attempts of one entry.
const MAX_BACKOFF_SECS: u64 = 300;
/// Entries one sweep handles at most (the next sweep takes the rest).
const SWEEP_BATCH: usize = 256;

/// Why an issued credential could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Recording failed; the credential was revoked again (or left to lapse, logged).
    #[error("the issued credential could not be recorded")]
    NotRecorded(#[source] LedgerError),
    /// No ledger is configured, so a revocable credential cannot be accounted for.
    #[error("no credential ledger is configured")]
    NoLedger,
    /// Its "issued" audit line could not be written; a revocable credential was revoked
    /// again (or, failing that, kept in the ledger for the sweeper).
    #[error("the issued credential could not be audited")]
    NotAudited,
}

/// How long a revocation's claim outlives its backend call's timeout (seconds).
const CLAIM_MARGIN_SECS: u64 = 30;

/// Delay before retry number `attempts + 1`: doubling from 1 s, capped.
pub fn backoff(attempts: u32) -> u64 {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(MAX_BACKOFF_SECS))
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(usize::try_from(attempts.min(40)).unwrap_or(40))
        .map_or(MAX_BACKOFF_SECS, |d| d.as_secs().min(MAX_BACKOFF_SECS))
}

fn audit_issue(
    holder: &Holder,
    generator: &GeneratorRef,
    kind: &str,
    generated: &Generated,
    outcome: &str,
) {
    let lease_id_hash = generated
        .revocation
        .as_ref()
        .map(|s| s.fingerprint())
        .unwrap_or_default();
    tracing::info!(
        target: "esi::audit",
        event = "issue",
        outcome,
        federation = %holder.federation,
        subject = %holder.subject,
        principal_type = holder.principal_kind.as_str(),
        requested_by = %holder.requested_by,
        namespace = %holder.namespace,
        service_account = %holder.service_account,
        pod = holder.pod_name.as_deref().unwrap_or(""),
        pod_uid = holder.pod_uid.as_deref().unwrap_or(""),
        generator = %generator,
        generator_kind = kind,
        lease_id_hash = %lease_id_hash,
        expires_at = generated.expires_at.unwrap_or(0),
        "credential issued"
    );
}

/// What happened to a recorded credential, as one audit line.
#[derive(Clone, Copy)]
enum EntryEvent {
    Revoke,
    Renew,
}

fn audit_entry(
    event: EntryEvent,
    entry: &LedgerEntry,
    kind: &str,
    reason: &str,
    outcome: &str,
    expires_at: Option<u64>,
    error: &str,
) {
    let (event, message) = match event {
        EntryEvent::Revoke => ("revoke", "credential revocation"),
        EntryEvent::Renew => ("renew", "credential renewal"),
    };
    tracing::info!(
        target: "esi::audit",
        event,
        outcome,
        reason,
        federation = %entry.holder.federation,
        subject = %entry.holder.subject,
        principal_type = entry.holder.principal_kind.as_str(),
        namespace = %entry.holder.namespace,
        service_account = %entry.holder.service_account,
        pod = entry.holder.pod_name.as_deref().unwrap_or(""),
        generator = %entry.generator,
        generator_kind = kind,
        lease_id_hash = %entry.state.fingerprint(),
        issued_at = entry.issued_at,
        expires_at = expires_at.or(entry.expires_at).unwrap_or(0),
        attempts = entry.attempts,
        error,
        "{message}"
    );
}

fn audit_revoke(entry: &LedgerEntry, kind: &str, reason: &str, outcome: &str, error: &str) {
    audit_entry(
        EntryEvent::Revoke,
        entry,
        kind,
        reason,
        outcome,
        None,
        error,
    );
}

fn audit_renew(entry: &LedgerEntry, kind: &str, outcome: &str, expires_at: u64, error: &str) {
    audit_entry(
        EntryEvent::Renew,
        entry,
        kind,
        "request",
        outcome,
        Some(expires_at),
        error,
    );
}

/// Accounts for a fresh credential before it is answered. A revocable one is recorded
/// durably in `ledger` and its entry id (the credential handle) returned; if that fails
/// (or there is no ledger) it is revoked again at once (bounded by `timeout`) and an error
/// is answered instead of the credential. `Ok(None)`: nothing to record (not revocable).
pub async fn record_issue(
    ledger: Option<&dyn Ledger>,
    generator: &dyn Generator,
    generator_ref: &GeneratorRef,
    holder: &Holder,
    generated: &Generated,
    timeout: Duration,
) -> Result<Option<String>, IssueError> {
    let kind = generator.kind();
    let Some(state) = &generated.revocation else {
        // Nothing to revoke: unaudited, it is simply not handed out.
        let ((), receipts) =
            crate::audit::collect(|| audit_issue(holder, generator_ref, kind, generated, "ok"));
        let outcome = if receipts.written().await {
            "ok"
        } else {
            "not_audited"
        };
        METRICS
            .credentials_issued
            .with_label_values(&[kind, outcome])
            .inc();
        return if outcome == "ok" {
            Ok(None)
        } else {
            Err(IssueError::NotAudited)
        };
    };
    let entry = LedgerEntry {
        id: uuid::Uuid::new_v4().to_string(),
        holder: holder.clone(),
        generator: generator_ref.clone(),
        state: state.clone(),
        issued_at: unix_now(),
        expires_at: generated.expires_at,
        renewable: generated.renewable,
        retry_at: None,
        claimed_until: None,
        attempts: 0,
        last_error: None,
    };
    let failure = match ledger {
        Some(ledger) => match ledger.record(&entry).await {
            Ok(()) => {
                let ((), receipts) = crate::audit::collect(|| {
                    audit_issue(holder, generator_ref, kind, generated, "ok")
                });
                if receipts.written().await {
                    METRICS
                        .credentials_issued
                        .with_label_values(&[kind, "ok"])
                        .inc();
                    return Ok(Some(entry.id));
                }
                IssueError::NotAudited
            }
            Err(e) => IssueError::NotRecorded(e),
        },
        None => IssueError::NoLedger,
    };
    // Not accounted for: it must not be handed out, and should not outlive this call.
    let outcome = match failure {
        IssueError::NotAudited => "not_audited",
        _ => "not_recorded",
    };
    METRICS
        .credentials_issued
        .with_label_values(&[kind, outcome])
        .inc();
    audit_issue(holder, generator_ref, kind, generated, outcome);
    tracing::error!(generator = %generator_ref, error = %failure, "issued credential not recorded; revoking it");
    let revoked = match tokio::time::timeout(timeout, generator.revoke(state)).await {
        Ok(r) => r,
        Err(_) => Err(GeneratorError::Unavailable("revocation timed out".into())),
    };
    let (outcome, error) = match &revoked {
        Ok(()) => ("ok", String::new()),
        Err(e) => ("error", e.to_string()),
    };
    METRICS
        .credentials_revoked
        .with_label_values(&[kind, outcome])
        .inc();
    audit_revoke(&entry, kind, "not_recorded", outcome, &error);
    // Recorded but unaudited: once revoked, the ledger entry has nothing left to track; if
    // revocation failed, the entry stays and the sweeper retries it.
    if matches!(failure, IssueError::NotAudited)
        && revoked.is_ok()
        && let Some(ledger) = ledger
        && let Err(e) = ledger.remove(&entry.id).await
    {
        tracing::warn!(generator = %generator_ref, error = %e, "revoked credential left in the ledger; the sweeper will drop it");
    }
    if revoked.is_err() {
        tracing::error!(generator = %generator_ref, lease_id_hash = %state.fingerprint(), "unrecorded credential could not be revoked; it lapses at its backend expiry");
    }
    Err(failure)
}

/// Why a credential was not renewed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The backend will not extend it (or it never could be): the holder needs a new one.
    #[error("the credential cannot be renewed; issue a new one")]
    NotRenewable,
    /// The backend failed or did not answer in time; the credential is unchanged.
    #[error("renewal failed: {0}")]
    Backend(#[source] GeneratorError),
    /// The backend renewed it but the ledger could not note the new expiry.
    #[error("renewal could not be recorded")]
    NotRecorded(#[source] LedgerError),
}

/// Renews `entry` with `generator` (the one serving its generator now) by `increment`
/// seconds (`None`: the backend's default), then moves its expiry in `ledger` so the
/// sweeper does not revoke it at the old one. Audited (`event=renew`) and counted in
/// `esi_credentials_renewed_total`.
pub async fn renew_entry(
    ledger: &dyn Ledger,
    generator: &dyn Generator,
    entry: &LedgerEntry,
    increment: Option<u64>,
    timeout: Duration,
) -> Result<Renewed, RenewError> {
    let kind = generator.kind();
    let result = match tokio::time::timeout(timeout, generator.renew(&entry.state, increment)).await
    {
        Ok(r) => r,
        Err(_) => Err(GeneratorError::Unavailable("renewal timed out".into())),
    };
    let count = |outcome: &str| {
        METRICS
            .credentials_renewed
            .with_label_values(&[kind, outcome])
            .inc();
    };
    let renewed = match result {
        Ok(r) => r,
        Err(GeneratorError::NotRenewable) => {
            count("not_renewable");
            audit_renew(
                entry,
                kind,
                "not_renewable",
                entry.expires_at.unwrap_or(0),
                "",
            );
            return Err(RenewError::NotRenewable);
        }
        Err(e) => {
            count("error");
            audit_renew(
                entry,
                kind,
                "error",
                entry.expires_at.unwrap_or(0),
                &e.to_string(),
            );
            return Err(RenewError::Backend(e));
        }
    };
    match ledger
        .renewed(&entry.id, renewed.expires_at, renewed.renewable)
        .await
    {
        Ok(true) => {
            count("ok");
            audit_renew(entry, kind, "ok", renewed.expires_at, "");
            Ok(renewed)
        }
        // Revoked while the renewal ran: the sweeper or a DELETE got there first.
        Ok(false) => {
            count("not_renewable");
            audit_renew(
                entry,
                kind,
                "not_renewable",
                renewed.expires_at,
                "revoked meanwhile",
            );
            Err(RenewError::NotRenewable)
        }
        Err(e) => {
            // The old expiry stays recorded: the sweeper revokes at it, never later.
            count("error");
            audit_renew(entry, kind, "error", renewed.expires_at, "not recorded");
            Err(RenewError::NotRecorded(e))
        }
    }
}

/// What a revocation pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RevokeSummary {
    /// Revoked at the backend and removed from the ledger.
    pub revoked: usize,
    /// Removed without a backend call: past expiry, and its generator is gone.
    pub lapsed: usize,
    /// Failed; kept and scheduled for a retry by the sweeper.
    pub failed: usize,
    /// Left alone: another revocation (a sweep, another replica) holds it, or it was
    /// renewed since it was read and is not due any more.
    pub taken: usize,
}

impl RevokeSummary {
    fn add(&mut self, other: RevokeSummary) {
        self.revoked += other.revoked;
        self.lapsed += other.lapsed;
        self.failed += other.failed;
        self.taken += other.taken;
    }
}

/// Revokes `entries` with the generators serving them now, removing each that is
/// revoked and scheduling a retry for each that is not (never dropping one silently).
/// An entry whose generator is no longer configured is removed only once it has
/// expired (the backend ended it); before that it waits for a retry.
pub async fn revoke_entries(
    ledger: &dyn Ledger,
    generators: &HashMap<GeneratorKey, Arc<dyn Generator>>,
    entries: Vec<LedgerEntry>,
    reason: &'static str,
    timeout: Duration,
) -> Result<RevokeSummary, LedgerError> {
    let mut summary = RevokeSummary::default();
    for entry in entries {
        summary.add(revoke_one(ledger, generators, &entry, reason, timeout).await?);
    }
    Ok(summary)
}

async fn revoke_one(
    ledger: &dyn Ledger,
    generators: &HashMap<GeneratorKey, Arc<dyn Generator>>,
    entry: &LedgerEntry,
    reason: &'static str,
    timeout: Duration,
) -> Result<RevokeSummary, LedgerError> {
    let now = unix_now();
    // Take the entry first, so that of several sweeps or replicas exactly one revokes it,
    // and a sweep never revokes what was renewed after it read the entry.
    let until = now
        .saturating_add(timeout.as_secs())
        .saturating_add(CLAIM_MARGIN_SECS);
    let Some(entry) = ledger
        .claim(&entry.id, now, until, reason == "sweep")
        .await?
    else {
        return Ok(RevokeSummary {
            taken: 1,
            ..RevokeSummary::default()
        });
    };
    let entry = &entry;
    let Some(generator) = generators.get(&entry.generator.lookup_key()) else {
        let kind = entry.generator.kind.as_str();
        if entry.expires_at.is_some_and(|at| at <= now) {
            if ledger.remove(&entry.id).await? {
                METRICS
                    .credentials_revoked
                    .with_label_values(&[kind, "lapsed"])
                    .inc();
                audit_revoke(
                    entry,
                    kind,
                    reason,
                    "lapsed",
                    "generator no longer configured",
                );
            }
            return Ok(RevokeSummary {
                lapsed: 1,
                ..RevokeSummary::default()
            });
        }
        let error = "generator no longer configured";
        ledger
            .mark_retry(&entry.id, now + backoff(entry.attempts), error)
            .await?;
        METRICS
            .credentials_revoked
            .with_label_values(&[kind, "error"])
            .inc();
        audit_revoke(entry, kind, reason, "error", error);
        return Ok(RevokeSummary {
            failed: 1,
            ..RevokeSummary::default()
        });
    };
    let kind = generator.kind();
    let result = match tokio::time::timeout(timeout, generator.revoke(&entry.state)).await {
        Ok(r) => r,
        Err(_) => Err(GeneratorError::Unavailable("revocation timed out".into())),
    };
    match result {
        Ok(()) => {
            // False: a concurrent pass removed it first; the backend call was idempotent.
            if ledger.remove(&entry.id).await? {
                METRICS
                    .credentials_revoked
                    .with_label_values(&[kind, "ok"])
                    .inc();
                audit_revoke(entry, kind, reason, "ok", "");
            }
            Ok(RevokeSummary {
                revoked: 1,
                ..RevokeSummary::default()
            })
        }
        Err(e) => {
            let error = e.to_string();
            ledger
                .mark_retry(&entry.id, unix_now() + backoff(entry.attempts), &error)
                .await?;
            METRICS
                .credentials_revoked
                .with_label_values(&[kind, "error"])
                .inc();
            audit_revoke(entry, kind, reason, "error", &error);
            tracing::warn!(generator = %entry.generator, attempts = entry.attempts + 1, error = %error, "revocation failed; the sweeper retries it");
            Ok(RevokeSummary {
                failed: 1,
                ..RevokeSummary::default()
            })
        }
    }
}

/// One sweep: revokes and removes what is due (expired, or a retry whose time has
/// come), in bounded batches.
pub async fn sweep_once(
    ledger: &dyn Ledger,
    snapshot: &Snapshot,
    timeout: Duration,
) -> Result<RevokeSummary, LedgerError> {
    let due = ledger.due(unix_now(), SWEEP_BATCH).await?;
    if due.is_empty() {
        return Ok(RevokeSummary::default());
    }
    let summary = revoke_entries(ledger, &snapshot.generators, due, "sweep", timeout).await?;
    tracing::info!(
        revoked = summary.revoked,
        lapsed = summary.lapsed,
        failed = summary.failed,
        "ledger sweep"
    );
    Ok(summary)
}

/// The background sweeper: every `interval`, revokes what is due with the generators
/// of the current snapshot.
pub struct Sweeper {
    /// The ledger swept.
    pub ledger: Arc<dyn Ledger>,
    /// The live configuration (generators are looked up per sweep).
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Time between sweeps.
    pub interval: Duration,
    /// Bound on each revocation call.
    pub timeout: Duration,
}

impl Sweeper {
    /// Runs forever (spawn it).
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let snapshot = self.snapshot.load_full();
            // Before the first snapshot (Kubernetes mode, first sync) no generator is known
            // yet: sweeping then would treat every credential's generator as gone.
            if snapshot.generation == 0 {
                continue;
            }
            if let Err(e) = sweep_once(self.ledger.as_ref(), &snapshot, self.timeout).await {
                tracing::error!(error = %e, "ledger sweep failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::identity;
    use super::super::{Owner, RedbLedger};
    use super::*;
    use crate::generators::{GenerateContext, RevocationState};
    use std::sync::Mutex;

    /// A revocable generator whose backend can be switched off.
    struct Leases {
        revoked: Mutex<Vec<RevocationState>>,
        fail: std::sync::atomic::AtomicBool,
        ttl: Option<u64>,
    }

    impl Leases {
        fn new(ttl: Option<u64>) -> Arc<Self> {
            Arc::new(Leases {
                revoked: Mutex::new(Vec::new()),
                fail: false.into(),
                ttl,
            })
        }
        fn set_failing(&self, fail: bool) {
            self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
        }
        fn revoked(&self) -> usize {
            self.revoked.lock().unwrap().len()
        }
    }

    #[async_trait::async_trait]
    impl Generator for Leases {
        fn kind(&self) -> &'static str {
            "TestLeases"
        }
        async fn generate(&self, _: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
            Ok(Generated {
                data: [("k".to_string(), "v".to_string())].into(),
                revocation: Some(RevocationState(
                    serde_json::json!({"leaseId": uuid::Uuid::new_v4().to_string()}),
                )),
                expires_at: self.ttl.map(|t| unix_now() + t),
                renewable: self.ttl.is_some(),
            })
        }
        async fn revoke(&self, state: &RevocationState) -> Result<(), GeneratorError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(GeneratorError::Unavailable("down".into()));
            }
            self.revoked.lock().unwrap().push(state.clone());
            Ok(())
        }
    }

    fn gref() -> GeneratorRef {
        GeneratorRef {
            namespace: "apps".into(),
            kind: "TestLeases".into(),
            name: "db".into(),
        }
    }

    fn generators(g: &Arc<Leases>) -> HashMap<GeneratorKey, Arc<dyn Generator>> {
        [(gref().lookup_key(), g.clone() as Arc<dyn Generator>)].into()
    }

    fn holder() -> Holder {
        Holder::new(&identity("alpha", "apps", "app", Some("app-1")), None)
    }

    async fn issue(ledger: &dyn Ledger, g: &Leases) -> Generated {
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        record_issue(
            Some(ledger),
            g,
            &gref(),
            &holder(),
            &out,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        out
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), 1);
        assert_eq!(backoff(3), 8);
        assert_eq!(backoff(20), MAX_BACKOFF_SECS);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF_SECS);
    }

    #[tokio::test]
    async fn records_then_revokes_by_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let g = Leases::new(None);
        issue(&ledger, &g).await;
        issue(&ledger, &g).await;
        let owned = ledger.by_owner(&holder().owner()).await.unwrap();
        assert_eq!(owned.len(), 2);
        let s = revoke_entries(
            &ledger,
            &generators(&g),
            owned,
            "request",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(
            s,
            RevokeSummary {
                revoked: 2,
                lapsed: 0,
                failed: 0,
                taken: 0,
            }
        );
        assert_eq!(g.revoked(), 2);
        assert_eq!(ledger.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn failures_are_kept_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let g = Leases::new(None);
        issue(&ledger, &g).await;
        g.set_failing(true);
        let owned = ledger.by_owner(&holder().owner()).await.unwrap();
        let s = revoke_entries(
            &ledger,
            &generators(&g),
            owned,
            "request",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(s.failed, 1);
        assert_eq!(ledger.count().await.unwrap(), 1);
        // The retry comes due after the backoff; the sweeper then succeeds.
        g.set_failing(false);
        let mut snapshot = Snapshot::empty();
        snapshot.generators = generators(&g);
        let mut swept = RevokeSummary::default();
        for _ in 0..30 {
            swept = sweep_once(&ledger, &snapshot, Duration::from_secs(1))
                .await
                .unwrap();
            if swept.revoked > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(swept.revoked, 1);
        assert_eq!(ledger.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn sweeper_revokes_expired_only() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let short = Leases::new(Some(0));
        let long = Leases::new(Some(3_600));
        issue(&ledger, &short).await;
        issue(&ledger, &long).await;
        let mut snapshot = Snapshot::empty();
        snapshot.generators = generators(&short);
        let s = sweep_once(&ledger, &snapshot, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(s.revoked, 1);
        assert_eq!(short.revoked(), 1);
        assert_eq!(ledger.count().await.unwrap(), 1);
    }

    /// Two replicas' sweeps read the same due entries before either revokes: each
    /// credential is revoked once.
    #[tokio::test]
    async fn racing_sweeps_revoke_each_credential_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let g = Leases::new(Some(0));
        for _ in 0..5 {
            issue(&ledger, &g).await;
        }
        let now = unix_now();
        let first = ledger.due(now, 100).await.unwrap();
        let second = ledger.due(now, 100).await.unwrap();
        assert_eq!((first.len(), second.len()), (5, 5));
        let gens = generators(&g);
        let (a, b) = tokio::join!(
            revoke_entries(&ledger, &gens, first, "sweep", Duration::from_secs(1)),
            revoke_entries(&ledger, &gens, second, "sweep", Duration::from_secs(1))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.revoked + b.revoked, 5, "{a:?} {b:?}");
        assert_eq!(a.taken + b.taken, 5, "{a:?} {b:?}");
        assert_eq!(g.revoked(), 5, "backend revocations");
        assert_eq!(ledger.count().await.unwrap(), 0);
    }

    /// A sweep that read an entry as due before its renewal leaves it alone.
    #[tokio::test]
    async fn a_sweep_never_revokes_what_was_renewed_after_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let g = Leases::new(Some(0));
        issue(&ledger, &g).await;
        let due = ledger.due(unix_now(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(
            ledger
                .renewed(&due[0].id, unix_now() + 3_600, true)
                .await
                .unwrap()
        );
        let s = revoke_entries(
            &ledger,
            &generators(&g),
            due,
            "sweep",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!((s.revoked, s.taken), (0, 1));
        assert_eq!(g.revoked(), 0);
        assert_eq!(ledger.count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn gone_generators_lapse_only_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
        let expired = Leases::new(Some(0));
        let live = Leases::new(None);
        issue(&ledger, &expired).await;
        issue(&ledger, &live).await;
        let owned = ledger.by_owner(&holder().owner()).await.unwrap();
        let s = revoke_entries(
            &ledger,
            &HashMap::new(),
            owned,
            "request",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(
            s,
            RevokeSummary {
                revoked: 0,
                lapsed: 1,
                failed: 1,
                taken: 0,
            }
        );
        let left = ledger.by_owner(&holder().owner()).await.unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].retry_at.is_some());
    }

    #[tokio::test]
    async fn unrecorded_credentials_are_revoked() {
        let g = Leases::new(None);
        let out = g.generate(&GenerateContext::default()).await.unwrap();
        let err = record_issue(
            None,
            g.as_ref(),
            &gref(),
            &holder(),
            &out,
            Duration::from_secs(1),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, IssueError::NoLedger));
        assert_eq!(g.revoked(), 1);
        // A failing store: the same.
        struct Broken;
        #[async_trait::async_trait]
        impl Ledger for Broken {
            async fn record(&self, _: &LedgerEntry) -> Result<(), LedgerError> {
                Err(LedgerError::Storage("disk full".into()))
            }
            async fn by_owner(&self, _: &Owner) -> Result<Vec<LedgerEntry>, LedgerError> {
                Ok(Vec::new())
            }
            async fn due(&self, _: u64, _: usize) -> Result<Vec<LedgerEntry>, LedgerError> {
                Ok(Vec::new())
            }
            async fn remove(&self, _: &str) -> Result<bool, LedgerError> {
                Ok(false)
            }
            async fn mark_retry(&self, _: &str, _: u64, _: &str) -> Result<(), LedgerError> {
                Ok(())
            }
            async fn count(&self) -> Result<usize, LedgerError> {
                Ok(0)
            }
            async fn get(&self, _: &str) -> Result<Option<LedgerEntry>, LedgerError> {
                Ok(None)
            }
            async fn renewed(&self, _: &str, _: u64, _: bool) -> Result<bool, LedgerError> {
                Ok(false)
            }
            async fn claim(
                &self,
                _: &str,
                _: u64,
                _: u64,
                _: bool,
            ) -> Result<Option<LedgerEntry>, LedgerError> {
                Ok(None)
            }
        }
        let err = record_issue(
            Some(&Broken),
            g.as_ref(),
            &gref(),
            &holder(),
            &out,
            Duration::from_secs(1),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, IssueError::NotRecorded(_)));
        assert_eq!(g.revoked(), 2);
        // Plain credentials need no ledger.
        let plain = Generated::plain([("a".to_string(), "b".to_string())].into());
        record_issue(
            None,
            g.as_ref(),
            &gref(),
            &holder(),
            &plain,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    }
}
