//! The issued-credential ledger: who (federation, namespace, ServiceAccount, pod; or
//! federation and OIDC subject) got what (generator, the state needed to revoke it,
//! expiry) and when.
//!
//! [`Ledger`] is the storage trait (directory mode: [`RedbLedger`], an embedded durable
//! store under `--data-dir`; several replicas: [`KubernetesLedger`], ESO `GeneratorState`
//! and ESE `AuthorizedIdentity` objects, or [`PostgresLedger`]). [`lifecycle`] holds what the API and the sweeper do
//! with it: record before answering, revoke by owner, sweep expired entries, retry
//! failed revocations, and write the audit lines and metrics of each step.
//!
//! Only revocable credentials are recorded (they carry a revocation state); credentials
//! that nothing holds (Password, UUID, SSHKey, Fake) get an audit line only.

pub mod kubernetes;
pub mod lifecycle;
pub mod postgres;
mod redb_store;

use serde::{Deserialize, Serialize};

use crate::authn::{Identity, PrincipalKind};
use crate::generators::{self, RevocationState};
use crate::resources::GeneratorKey;

pub use kubernetes::KubernetesLedger;
pub use lifecycle::{RevokeSummary, Sweeper};
pub use postgres::PostgresLedger;
pub use redb_store::RedbLedger;

/// The default `--data-dir` (self-signed TLS material and `ledger.redb`): always an
/// absolute path, so the server never writes into whatever directory it was started in
/// (a read-only root in a container, or `/` as a service). In order:
///
/// 1. `$STATE_DIRECTORY` (systemd's `StateDirectory=`; the first path if several);
/// 2. `$XDG_STATE_HOME/esi-server` (XDG Base Directory: state that persists);
/// 3. `$HOME/.local/state/esi-server` (XDG's default for it);
/// 4. `/var/lib/esi-server` (FHS: variable state of a service).
///
/// Relative values of these variables are ignored, as the XDG spec requires.
pub fn default_data_dir() -> std::path::PathBuf {
    default_data_dir_from(|name| std::env::var_os(name))
}

fn default_data_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> std::path::PathBuf {
    use std::path::PathBuf;
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(first) = var("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next().map(PathBuf::from))
        })
        .filter(|p| p.is_absolute())
    {
        return first;
    }
    if let Some(state) = absolute(var("XDG_STATE_HOME")) {
        return state.join("esi-server");
    }
    if let Some(home) = absolute(var("HOME")) {
        return home.join(".local/state/esi-server");
    }
    PathBuf::from("/var/lib/esi-server")
}

/// What kind of workload owns a credential. Pods and ServiceAccounts are separate name
/// spaces in Kubernetes: a ServiceAccount `app-pod` and a Pod `app-pod` are different
/// owners and never share credentials (issue 19, finding 10). An OIDC subject is a third
/// name space (issue 18): it has no namespace, and no ServiceAccount or Pod of any name is
/// the same owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OwnerKind {
    /// A pod-bound token's pod (`kubernetes.io.pod.name`).
    Pod,
    /// A ServiceAccount token without a pod claim.
    ServiceAccount,
    /// The subject of an OIDC federation's token, or the SPIFFE ID of a SPIFFE workload
    /// whose path names no Kubernetes workload (its owner's `namespace` is empty).
    OidcSubject,
}

impl OwnerKind {
    /// The tag stored in the ledger's owner index and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Pod => "pod",
            OwnerKind::ServiceAccount => "serviceaccount",
            OwnerKind::OidcSubject => "oidcsubject",
        }
    }
}

/// Whose credentials an operation concerns, within its federation and namespace: the pod
/// when the token was pod-bound, else the ServiceAccount, each in its own name space; for
/// an OIDC subject, the subject (no namespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// `KubernetesFederation` name.
    pub federation: String,
    /// Namespace of the workload in its cluster.
    pub namespace: String,
    /// `Some`: exactly that pod, ServiceAccount or OIDC subject (what [`Holder::owner`]
    /// gives). `None`: ESE's plain `owner` name in `POST /generators/{ns}/revoke` — the pod
    /// of that name and the ServiceAccount of that name (its credentials issued outside any
    /// pod), never an OIDC subject. That call is authorized for the whole namespace
    /// (`allowedGeneratorStates`), so naming both is no wider than the caller's right.
    pub kind: Option<OwnerKind>,
    /// Pod name, ServiceAccount name, or OIDC subject.
    pub name: String,
}

impl Owner {
    /// The owner named by ESE's `POST /generators/{ns}/revoke` body: `pod/<name>` or
    /// `serviceaccount/<name>` select one kind; a plain `<name>` (ESE's form) selects
    /// both (see [`Owner::kind`]). Kubernetes names hold no `/`, so the forms cannot
    /// be confused.
    pub fn from_ese(federation: String, namespace: String, owner: &str) -> Owner {
        let (kind, name) = match owner.split_once('/') {
            Some(("pod", name)) => (Some(OwnerKind::Pod), name),
            Some(("serviceaccount", name)) => (Some(OwnerKind::ServiceAccount), name),
            _ => (None, owner),
        };
        Owner {
            federation,
            namespace,
            kind,
            name: name.to_owned(),
        }
    }
}

/// The verified workload a credential was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The federation's name.
    pub federation: String,
    /// The federation's kind when it is not a `KubernetesFederation` (entries of
    /// Kubernetes holders leave it out, as before there were other kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_kind: Option<String>,
    /// The kind of principal (absent in what is written for a ServiceAccount, as before
    /// there were other kinds). An OIDC subject's holder has an empty namespace and
    /// ServiceAccount, and no pod.
    #[serde(default, skip_serializing_if = "PrincipalKind::is_service_account")]
    pub principal_kind: PrincipalKind,
    /// The workload token's `iss` (empty in entries recorded before it was kept). Shown in
    /// the Kubernetes ledger's `AuthorizedIdentity` (`identitySpec.subject.oidc.issuer`).
    #[serde(default)]
    pub issuer: String,
    /// The workload token's subject (a ServiceAccount token's `sub`; an OIDC token's
    /// subject claim).
    pub subject: String,
    /// ServiceAccount namespace (empty for an OIDC subject).
    pub namespace: String,
    /// ServiceAccount name (empty for an OIDC subject).
    pub service_account: String,
    /// ServiceAccount UID, when the token carries it (the Kubernetes ledger's
    /// `workloadBinding.uid` of a credential issued outside any pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_uid: Option<String>,
    /// Pod name, for pod-bound tokens.
    pub pod_name: Option<String>,
    /// Pod UID, for pod-bound tokens.
    pub pod_uid: Option<String>,
    /// The bearer token's `sub` (differs from `subject` when an `x-workload-token`
    /// named the workload).
    pub requested_by: String,
}

impl Holder {
    /// The holder is the verified `x-workload-token` identity when one was sent
    /// (ESE: the workload on whose behalf the caller asks), else the caller.
    pub fn new(caller: &Identity, workload: Option<&Identity>) -> Self {
        let w = workload.unwrap_or(caller);
        let sa = w.service_account();
        let text = |f: fn(&crate::authn::ServiceAccount) -> &Option<String>| {
            sa.and_then(|sa| f(sa).clone()).filter(|v| !v.is_empty())
        };
        Holder {
            federation: w.federation.clone(),
            federation_kind: (w.federation_kind != crate::authn::FederationKind::Kubernetes)
                .then(|| w.federation_kind.as_str().to_owned()),
            principal_kind: w.kind(),
            issuer: w.issuer.clone(),
            subject: w.subject.clone(),
            namespace: sa.map(|sa| sa.namespace.clone()).unwrap_or_default(),
            service_account: sa.map(|sa| sa.name.clone()).unwrap_or_default(),
            service_account_uid: text(|sa| &sa.uid),
            pod_name: text(|sa| &sa.pod_name),
            pod_uid: text(|sa| &sa.pod_uid),
            requested_by: caller.subject.clone(),
        }
    }

    /// Whether `other` is the very workload this holder is: the same federation, kind of
    /// principal and subject, and — for a ServiceAccount — the same namespace and
    /// ServiceAccount, and the same Pod (name and UID) or none. Only that workload may
    /// renew or revoke a credential by its handle (issue 17); a Pod of the same name
    /// re-created later (a StatefulSet's) is another workload, and an OIDC subject is never
    /// a ServiceAccount whatever its `sub` says.
    pub fn same_workload(&self, other: &Holder) -> bool {
        self.federation == other.federation
            && self.principal_kind == other.principal_kind
            && self.subject == other.subject
            && self.namespace == other.namespace
            && self.service_account == other.service_account
            && self.pod_name == other.pod_name
            && self.pod_uid == other.pod_uid
    }

    /// The owner: the pod if the token was pod-bound, else the ServiceAccount; for an OIDC
    /// subject, the subject.
    ///
    /// A SPIFFE workload whose path names a Kubernetes workload (ESE's convention) is owned
    /// as that Pod or ServiceAccount is, within its own federation; any other SPIFFE
    /// workload by its SPIFFE ID, as an OIDC subject by its subject.
    pub fn owner(&self) -> Owner {
        let by_subject = match self.principal_kind {
            PrincipalKind::OidcSubject => true,
            PrincipalKind::SpiffeWorkload => self.namespace.is_empty(),
            PrincipalKind::ServiceAccount => false,
        };
        if by_subject {
            return Owner {
                federation: self.federation.clone(),
                namespace: String::new(),
                kind: Some(OwnerKind::OidcSubject),
                name: self.subject.clone(),
            };
        }
        let (kind, name) = match &self.pod_name {
            Some(pod) => (OwnerKind::Pod, pod.clone()),
            None => (OwnerKind::ServiceAccount, self.service_account.clone()),
        };
        Owner {
            federation: self.federation.clone(),
            namespace: self.namespace.clone(),
            kind: Some(kind),
            name,
        }
    }
}

/// A generator as the caller named it (`/generators/{namespace}/{kind}/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GeneratorRef {
    /// Namespace from the URL (for a ClusterGenerator too: it scopes the entry).
    pub namespace: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

impl GeneratorRef {
    /// The snapshot key serving this reference: cluster-scoped kinds have no namespace.
    pub fn lookup_key(&self) -> GeneratorKey {
        GeneratorKey {
            namespace: if generators::is_cluster_scoped(&self.kind) {
                String::new()
            } else {
                self.namespace.clone()
            },
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

impl std::fmt::Display for GeneratorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// One issued, revocable credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Unique id (UUID v4).
    pub id: String,
    /// Who got it.
    pub holder: Holder,
    /// Which generator issued it.
    pub generator: GeneratorRef,
    /// What that generator needs to revoke it.
    pub state: RevocationState,
    /// Issued at (seconds since the epoch).
    pub issued_at: u64,
    /// When the backend lets it lapse (seconds since the epoch), if it does. Moves with
    /// each renewal.
    pub expires_at: Option<u64>,
    /// Whether the backend said it can be renewed (entries recorded before renewals
    /// existed read as false).
    #[serde(default)]
    pub renewable: bool,
    /// Set once a revocation was asked for and failed: the next attempt's time.
    pub retry_at: Option<u64>,
    /// While a revocation runs (on any replica): until when it holds the entry
    /// ([`Ledger::claim`]). A holder that dies leaves the entry due at that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_until: Option<u64>,
    /// Failed revocation attempts so far.
    pub attempts: u32,
    /// The last failure (a safe message: no values).
    pub last_error: Option<String>,
}

impl LedgerEntry {
    /// When the sweeper should act on this entry: the end of a revocation's claim, else
    /// the pending retry, else expiry.
    pub fn due_at(&self) -> Option<u64> {
        self.claimed_until.or(self.retry_at).or(self.expires_at)
    }

    /// Whether a revocation may take this entry at `now`: no other revocation holds it (no
    /// claim lasting past `now`) and, with `only_if_due`, it is due (its retry time or
    /// expiry, or a dead holder's claim end, has come).
    pub fn claimable(&self, now: u64, only_if_due: bool) -> bool {
        let held = self.claimed_until.is_some_and(|c| c > now);
        !held && (!only_if_due || self.due_at().is_some_and(|d| d <= now))
    }

    /// Whether a revocation holds this entry or waits to retry it (then it is not renewed).
    pub fn revoking(&self) -> bool {
        self.claimed_until.is_some() || self.retry_at.is_some()
    }

    /// [`Ledger::claim`]'s change, for every backend: takes the entry until `until` when
    /// [`claimable`](Self::claimable); false (unchanged) otherwise.
    pub fn take_claim(&mut self, now: u64, until: u64, only_if_due: bool) -> bool {
        let take = self.claimable(now, only_if_due);
        if take {
            self.claimed_until = Some(until);
        }
        take
    }

    /// [`Ledger::renewed`]'s change: the new expiry, unless a revocation holds the entry
    /// or waits to retry it (false, unchanged).
    pub fn take_renewal(&mut self, expires_at: u64, renewable: bool) -> bool {
        if self.revoking() {
            return false;
        }
        self.expires_at = Some(expires_at);
        self.renewable = renewable;
        true
    }

    /// [`Ledger::mark_retry`]'s change: the claim ends, the attempt is counted, the next is
    /// scheduled at `retry_at`; `error` is kept cut to 512 characters.
    pub fn take_failure(&mut self, retry_at: u64, error: &str) -> bool {
        self.retry_at = Some(retry_at);
        self.claimed_until = None;
        self.attempts = self.attempts.saturating_add(1);
        self.last_error = Some(error.chars().take(512).collect());
        true
    }
}

/// A ledger failure. Messages hold no credential values or revocation states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The store failed (I/O, corruption, lock).
    #[error("ledger storage failed: {0}")]
    Storage(String),
    /// An entry could not be encoded or decoded.
    #[error("ledger entry is malformed: {0}")]
    Codec(String),
    /// The ledger file exists but is empty: refused, since starting a new ledger in it
    /// would forget every credential issued.
    #[error(
        "the ledger {path} exists but is empty (0 bytes): it was truncated or replaced, and the credentials it recorded would be forgotten. Restore it from a backup, or delete it to start a new, empty ledger knowingly"
    )]
    Empty {
        /// The file.
        path: String,
    },
    /// The ledger file is damaged: refused rather than partly forgotten.
    #[error(
        "the ledger {path} is damaged: {reason}. Restore it from a backup, or move it aside to start a new, empty ledger (credentials it recorded must then be revoked at their backends)"
    )]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong (no content).
        reason: String,
    },
}

/// Where issued credentials are recorded. Every write is durable when it returns.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// Records a new entry (durably, before the credential is handed out).
    async fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Every entry of `owner`.
    async fn by_owner(&self, owner: &Owner) -> Result<Vec<LedgerEntry>, LedgerError>;
    /// Up to `limit` entries due at `now` (expired, or a retry whose time has come),
    /// earliest first.
    async fn due(&self, now: u64, limit: usize) -> Result<Vec<LedgerEntry>, LedgerError>;
    /// Removes an entry; false when it was not there (e.g. revoked concurrently).
    async fn remove(&self, id: &str) -> Result<bool, LedgerError>;
    /// Notes a failed revocation: counts the attempt and schedules the next at `retry_at`.
    async fn mark_retry(&self, id: &str, retry_at: u64, error: &str) -> Result<(), LedgerError>;
    /// The entry with this id (a credential handle), if recorded.
    async fn get(&self, id: &str) -> Result<Option<LedgerEntry>, LedgerError>;
    /// Takes an entry for revocation, atomically: when it exists, no other revocation holds
    /// it ([`LedgerEntry::claimable`]) and, with `only_if_due`, it is due at `now`, it is
    /// scheduled for `until` (so that, should this replica die mid-revocation, it is due
    /// again then) and returned as stored. `None` when it is gone, was renewed since it was
    /// read, or is being revoked elsewhere: of several replicas (or sweeps) racing for one
    /// entry, exactly one gets it.
    async fn claim(
        &self,
        id: &str,
        now: u64,
        until: u64,
        only_if_due: bool,
    ) -> Result<Option<LedgerEntry>, LedgerError>;
    /// Notes a renewal: the entry now lapses at `expires_at` (so the sweeper does not
    /// revoke it at its old expiry) and may or may not be renewed again. False when the
    /// entry is gone (revoked meanwhile) or a revocation holds it or waits to retry it
    /// (`retry_at` set): a credential being revoked is never reported renewed.
    async fn renewed(
        &self,
        id: &str,
        expires_at: u64,
        renewable: bool,
    ) -> Result<bool, LedgerError>;
    /// Number of entries (all owners).
    async fn count(&self) -> Result<usize, LedgerError>;
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The claim rules every ledger keeps (run by each backend's tests): exactly one of
    /// two racing claims wins; a renewal read after the due list keeps the sweep off; a
    /// claim blocks renewals; a dead holder's claim lapses; a failed revocation leaves an
    /// entry an owner may revoke again at once.
    pub async fn claims_are_exclusive(ledger: &dyn Ledger) {
        let now = 10_000;
        let holder = Holder::new(&identity("a", "n", "s", Some("p")), None);
        let due = entry(&holder, ("n", "VaultDynamicSecret", "db"), Some(now - 1));
        ledger.record(&due).await.unwrap();
        let (a, b) = tokio::join!(
            ledger.claim(&due.id, now, now + 60, true),
            ledger.claim(&due.id, now, now + 60, true)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_some() != b.is_some(), "exactly one claim wins");
        assert!(
            ledger
                .claim(&due.id, now + 1, now + 61, false)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !ledger.renewed(&due.id, now + 3_600, true).await.unwrap(),
            "a credential being revoked is not renewed"
        );
        // Its holder died: the claim lapses and the entry is due again.
        let dead = ledger.due(now + 61, 10).await.unwrap();
        assert_eq!(dead.iter().filter(|e| e.id == due.id).count(), 1);
        assert!(
            ledger
                .claim(&due.id, now + 61, now + 120, true)
                .await
                .unwrap()
                .is_some()
        );
        // A failed revocation: retried later by the sweeper, but an owner may ask now.
        ledger
            .mark_retry(&due.id, now + 500, "backend down")
            .await
            .unwrap();
        assert!(
            ledger
                .claim(&due.id, now + 62, now + 120, true)
                .await
                .unwrap()
                .is_none()
        );
        let taken = ledger
            .claim(&due.id, now + 62, now + 120, false)
            .await
            .unwrap();
        assert_eq!(taken.map(|e| e.attempts), Some(1));

        // Read as due by a sweep, then renewed: the sweep's claim finds it not due.
        let renewed = entry(&holder, ("n", "VaultDynamicSecret", "db"), Some(now - 1));
        ledger.record(&renewed).await.unwrap();
        assert!(
            ledger
                .due(now, 10)
                .await
                .unwrap()
                .iter()
                .any(|e| e.id == renewed.id)
        );
        assert!(
            ledger
                .renewed(&renewed.id, now + 3_600, true)
                .await
                .unwrap()
        );
        assert!(
            ledger
                .claim(&renewed.id, now, now + 60, true)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            ledger
                .claim(&renewed.id, now, now + 60, false)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            ledger
                .claim("no-such-id", now, now + 60, false)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// An identity as authn would produce it.
    pub fn identity(federation: &str, namespace: &str, sa: &str, pod: Option<&str>) -> Identity {
        let mut id = Identity::of_service_account(
            federation,
            "https://kubernetes.default.svc.cluster.local",
            namespace,
            sa,
        );
        if let Some(sa) = id.service_account_mut() {
            sa.pod_name = pod.map(str::to_string);
            sa.pod_uid = pod.map(|p| format!("uid-{p}"));
        }
        id
    }

    /// An OIDC subject as authn would produce it.
    pub fn oidc_identity(federation: &str, subject: &str) -> Identity {
        Identity::of_oidc_subject(federation, "https://token.example", subject, &[])
    }

    /// An entry for `holder` from `generator` with a lease-like state.
    pub fn entry(
        holder: &Holder,
        generator: (&str, &str, &str),
        expires_at: Option<u64>,
    ) -> LedgerEntry {
        let id = uuid::Uuid::new_v4().to_string();
        LedgerEntry {
            state: RevocationState(serde_json::json!({ "leaseId": format!("lease/{id}") })),
            id,
            holder: holder.clone(),
            generator: GeneratorRef {
                namespace: generator.0.into(),
                kind: generator.1.into(),
                name: generator.2.into(),
            },
            issued_at: 1_000,
            expires_at,
            renewable: expires_at.is_some(),
            retry_at: None,
            claimed_until: None,
            attempts: 0,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    /// Issue 18: a credential issued to an OIDC subject is owned by (federation, subject),
    /// in a name space of its own: no ServiceAccount, Pod or other subject — nor the same
    /// subject of another federation — is that owner or the same workload, and ESE's
    /// namespace-wide revocation never names it.
    #[test]
    fn oidc_subjects_own_their_credentials_alone() {
        let ci = Holder::new(
            &oidc_identity("github", "repo:org/app:ref:refs/heads/main"),
            None,
        );
        assert_eq!(ci.principal_kind, PrincipalKind::OidcSubject);
        assert_eq!(ci.federation_kind.as_deref(), Some("OIDCFederation"));
        assert_eq!(
            (ci.namespace.as_str(), ci.service_account.as_str()),
            ("", "")
        );
        assert_eq!(ci.pod_name, None);
        let owner = ci.owner();
        assert_eq!(
            owner,
            Owner {
                federation: "github".into(),
                namespace: String::new(),
                kind: Some(OwnerKind::OidcSubject),
                name: "repo:org/app:ref:refs/heads/main".into(),
            }
        );
        let same = Holder::new(
            &oidc_identity("github", "repo:org/app:ref:refs/heads/main"),
            None,
        );
        assert!(ci.same_workload(&same));
        for other in [
            Holder::new(
                &oidc_identity("github", "repo:org/app:ref:refs/heads/dev"),
                None,
            ),
            Holder::new(
                &oidc_identity("gitlab", "repo:org/app:ref:refs/heads/main"),
                None,
            ),
        ] {
            assert!(!ci.same_workload(&other), "{other:?}");
            assert_ne!(ci.owner(), other.owner());
        }
        // A ServiceAccount whose subject text equals an OIDC subject's is not it.
        let oidc_sa_text = Holder::new(
            &oidc_identity("alpha", "system:serviceaccount:apps:app"),
            None,
        );
        let sa = Holder::new(&identity("alpha", "apps", "app", None), None);
        assert_eq!(oidc_sa_text.subject, sa.subject);
        assert!(!oidc_sa_text.same_workload(&sa));
        assert!(!sa.same_workload(&oidc_sa_text));
        assert_ne!(oidc_sa_text.owner(), sa.owner());
        // ESE's `{owner, namespace}` names Pods and ServiceAccounts only.
        let ese = Owner::from_ese("github".into(), String::new(), &owner.name);
        assert_eq!(ese.kind, None);
        // Entries of ServiceAccounts are written as before (no kind fields), and such
        // entries read back as ServiceAccounts.
        let json = serde_json::to_value(&sa).unwrap();
        assert!(json.get("principal_kind").is_none() && json.get("federation_kind").is_none());
        let back: Holder = serde_json::from_value(json).unwrap();
        assert_eq!(back, sa);
        let json = serde_json::to_value(&ci).unwrap();
        assert_eq!(json["principal_kind"], "OidcSubject");
        assert_eq!(serde_json::from_value::<Holder>(json).unwrap(), ci);
    }

    #[test]
    fn owner_is_pod_else_service_account() {
        let with_pod = identity("alpha", "apps", "app", Some("app-7d9"));
        let owner = Holder::new(&with_pod, None).owner();
        assert_eq!(owner.name, "app-7d9");
        assert_eq!(owner.kind, Some(OwnerKind::Pod));
        let without = identity("alpha", "apps", "app", None);
        let holder = Holder::new(&without, None);
        assert_eq!(
            holder.owner(),
            Owner {
                federation: "alpha".into(),
                namespace: "apps".into(),
                kind: Some(OwnerKind::ServiceAccount),
                name: "app".into()
            }
        );
        // A ServiceAccount named like another workload's pod is another owner.
        let sa_named_like_pod = identity("alpha", "apps", "app-7d9", None);
        assert_ne!(Holder::new(&sa_named_like_pod, None).owner(), owner);
        assert_eq!(holder.requested_by, "system:serviceaccount:apps:app");
    }

    #[test]
    fn only_the_same_workload_holds_a_credential() {
        let holder = Holder::new(&identity("alpha", "apps", "app", Some("app-1")), None);
        // The same Pod with another (fresh) token, or through a federation client.
        let controller = identity("alpha", "eso", "external-secrets", None);
        assert!(holder.same_workload(&Holder::new(
            &identity("alpha", "apps", "app", Some("app-1")),
            None
        )));
        assert!(holder.same_workload(&Holder::new(
            &controller,
            Some(&identity("alpha", "apps", "app", Some("app-1")))
        )));
        for other in [
            identity("beta", "apps", "app", Some("app-1")),
            identity("alpha", "other", "app", Some("app-1")),
            identity("alpha", "apps", "app2", Some("app-1")),
            identity("alpha", "apps", "app", Some("app-2")),
            identity("alpha", "apps", "app", None),
        ] {
            assert!(
                !holder.same_workload(&Holder::new(&other, None)),
                "{other:?}"
            );
        }
        // A Pod re-created under the same name has another UID.
        let mut recreated = identity("alpha", "apps", "app", Some("app-1"));
        recreated.service_account_mut().unwrap().pod_uid = Some("uid-new".into());
        assert!(!holder.same_workload(&Holder::new(&recreated, None)));
    }

    #[test]
    fn default_data_dir_is_absolute() {
        use std::ffi::OsString;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let d = |pairs| default_data_dir_from(env(pairs));
        assert_eq!(d(&[]), std::path::PathBuf::from("/var/lib/esi-server"));
        assert_eq!(
            d(&[("HOME", "/home/u")]),
            std::path::PathBuf::from("/home/u/.local/state/esi-server")
        );
        assert_eq!(
            d(&[("HOME", "/home/u"), ("XDG_STATE_HOME", "/s")]),
            std::path::PathBuf::from("/s/esi-server")
        );
        assert_eq!(
            d(&[
                ("HOME", "/home/u"),
                ("XDG_STATE_HOME", "rel"),
                ("STATE_DIRECTORY", "/var/lib/x:/var/lib/y")
            ]),
            std::path::PathBuf::from("/var/lib/x")
        );
        assert_eq!(
            d(&[("HOME", "relative"), ("STATE_DIRECTORY", "also-relative")]),
            std::path::PathBuf::from("/var/lib/esi-server")
        );
        assert!(default_data_dir().is_absolute());
    }

    #[test]
    fn ese_owner_names() {
        let o = |s: &str| Owner::from_ese("f".into(), "n".into(), s);
        assert_eq!(o("pod/a").kind, Some(OwnerKind::Pod));
        assert_eq!(o("pod/a").name, "a");
        assert_eq!(o("serviceaccount/a").kind, Some(OwnerKind::ServiceAccount));
        assert_eq!((o("a").kind, o("a").name.as_str()), (None, "a"));
        assert_eq!(o("x/a").kind, None);
    }

    #[test]
    fn workload_token_names_the_holder() {
        let controller = identity("alpha", "eso", "external-secrets", None);
        let workload = identity("alpha", "apps", "app", Some("app-1"));
        let h = Holder::new(&controller, Some(&workload));
        assert_eq!(h.subject, "system:serviceaccount:apps:app");
        assert_eq!(h.pod_uid.as_deref(), Some("uid-app-1"));
        assert_eq!(h.requested_by, "system:serviceaccount:eso:external-secrets");
        assert_eq!(h.owner().namespace, "apps");
    }

    #[test]
    fn cluster_generators_have_no_namespace() {
        let r = GeneratorRef {
            namespace: "apps".into(),
            kind: "ClusterGenerator".into(),
            name: "pw".into(),
        };
        assert_eq!(r.lookup_key().namespace, "");
        let r = GeneratorRef {
            kind: "VaultDynamicSecret".into(),
            ..r
        };
        assert_eq!(r.lookup_key().namespace, "apps");
        assert_eq!(r.to_string(), "apps/VaultDynamicSecret/pw");
    }

    #[test]
    fn due_prefers_a_pending_retry() {
        let h = Holder::new(&identity("a", "n", "s", None), None);
        let mut e = entry(&h, ("n", "VaultDynamicSecret", "g"), Some(50));
        assert_eq!(e.due_at(), Some(50));
        e.retry_at = Some(70);
        assert_eq!(e.due_at(), Some(70));
        e.expires_at = None;
        assert_eq!(e.due_at(), Some(70));
        e.retry_at = None;
        assert_eq!(e.due_at(), None);
    }
}
