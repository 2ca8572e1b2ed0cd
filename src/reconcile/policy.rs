//! Pure decisions shared by every mode: when to sync (`refreshPolicy`, `refreshInterval`,
//! the `force-sync` annotation), and what to do with the target Secret
//! (`creationPolicy` × `deletionPolicy`), each as ESO's controller decides it
//! (`shouldRefresh`, `isSecretValid`, and the `Reconcile` switch).

use std::time::{Duration, SystemTime};

use crate::resources::external_secret::{CreationPolicy, DeletionPolicy, RefreshPolicy};

use super::SyncError;

/// ESO's CRD default `refreshInterval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// Parses `spec.refreshInterval` (a Go duration; absent: 1h; `0`: never refresh).
pub fn refresh_interval(spec: Option<&str>) -> Result<Duration, SyncError> {
    match spec {
        None => Ok(DEFAULT_REFRESH_INTERVAL),
        Some(s) => crate::support::duration::parse_duration(s)
            .map_err(|e| SyncError::InvalidSpec(format!("spec.refreshInterval: {e}"))),
    }
}

/// What the last sync left in the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastSync {
    /// `status.refreshTime`: when the last successful sync started.
    pub refresh_time: Option<SystemTime>,
    /// `status.syncedResourceVersion`: the ExternalSecret version it synced.
    pub synced_resource_version: Option<String>,
    /// Whether the last attempt failed (`Ready=False`).
    pub failed: bool,
}

/// Whether ESO's `shouldRefresh` says sync now. `resource_version` is the ExternalSecret's
/// current version (it covers the spec, labels and annotations, so writing a new
/// `force-sync: <timestamp>` annotation, ESO's documented way to force a sync, changes it).
///
/// - `CreatedOnce`: only if it never synced.
/// - `OnChange`: if it never synced or the ExternalSecret changed.
/// - `Periodic`: with interval 0, only if it never synced; else if it changed, never
///   synced, the last refresh lies in the future, or the interval has passed.
pub fn should_refresh(
    policy: RefreshPolicy,
    interval: Duration,
    resource_version: &str,
    last: &LastSync,
    now: SystemTime,
) -> bool {
    let never = last.synced_resource_version.is_none() || last.refresh_time.is_none();
    let changed = last.synced_resource_version.as_deref() != Some(resource_version);
    match policy {
        RefreshPolicy::CreatedOnce => never,
        RefreshPolicy::OnChange => never || changed,
        RefreshPolicy::Periodic => {
            if interval.is_zero() && last.synced_resource_version.is_some() {
                return false;
            }
            match last.refresh_time {
                _ if changed => true,
                None => true,
                Some(t) if t > now => true,
                // An interval beyond the clock's range is never due (not "always").
                Some(t) => t.checked_add(interval).is_some_and(|due| due < now),
            }
        }
    }
}

/// Whether to sync now: [`should_refresh`], or the Secret is not what the last sync wrote
/// (ESO's `isSecretValid`: absent, or its data changed), or (this reconciler's addition)
/// the last attempt failed, which is retried on every pass.
pub fn needs_sync(
    policy: RefreshPolicy,
    interval: Duration,
    resource_version: &str,
    last: &LastSync,
    secret_valid: bool,
    now: SystemTime,
) -> bool {
    last.failed || !secret_valid || should_refresh(policy, interval, resource_version, last, now)
}

/// When the next periodic sync is due (`None`: never, for `CreatedOnce`, `OnChange` and
/// interval 0; or now, when there was no successful sync yet).
pub fn next_refresh(
    policy: RefreshPolicy,
    interval: Duration,
    last: &LastSync,
) -> Option<SystemTime> {
    if policy != RefreshPolicy::Periodic || interval.is_zero() {
        return None;
    }
    match last.refresh_time {
        None => Some(SystemTime::UNIX_EPOCH),
        Some(t) => t.checked_add(interval),
    }
}

/// What to do with the target Secret after a successful fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAction {
    /// Create or replace it (Owner: with an owner reference to the ExternalSecret; Orphan:
    /// without). Ready: `SecretSynced`.
    Write,
    /// Write the data into the existing Secret, keeping its other keys, labels and
    /// annotations (creationPolicy Merge). Ready: `SecretSynced`.
    MergeInto,
    /// Delete it (the provider has no data, deletionPolicy Delete). Ready: `SecretDeleted`.
    Delete,
    /// Leave it as it is (the provider has no data, deletionPolicy Retain). Ready:
    /// `SecretSynced`, "secret retained due to DeletionPolicy=Retain".
    Retain,
    /// Merge target absent: write nothing, wait. Ready: `SecretMissing`.
    WaitForTarget,
    /// creationPolicy None: write nothing. Ready: `SecretSynced`.
    Nothing,
}

/// ESO's decision: `data_empty` is whether the provider data (before templating) is empty,
/// `exists` whether the target Secret exists now. Delete with a creationPolicy other than
/// Owner is refused (ESO deletes only Secrets it owns).
pub fn secret_action(
    creation: CreationPolicy,
    deletion: DeletionPolicy,
    data_empty: bool,
    exists: bool,
    secret: &str,
) -> Result<SecretAction, SyncError> {
    if data_empty {
        match deletion {
            DeletionPolicy::Delete if creation != CreationPolicy::Owner => {
                return Err(SyncError::DeleteNotOwner {
                    secret: secret.to_string(),
                    policy: creation_policy_name(creation),
                });
            }
            DeletionPolicy::Delete => return Ok(SecretAction::Delete),
            DeletionPolicy::Retain => return Ok(SecretAction::Retain),
            DeletionPolicy::Merge => {}
        }
    }
    Ok(match creation {
        CreationPolicy::Merge if exists => SecretAction::MergeInto,
        CreationPolicy::Merge => SecretAction::WaitForTarget,
        CreationPolicy::None => SecretAction::Nothing,
        CreationPolicy::Owner | CreationPolicy::Orphan => SecretAction::Write,
    })
}

/// ESO's spelling of a creation policy.
pub fn creation_policy_name(p: CreationPolicy) -> &'static str {
    match p {
        CreationPolicy::Owner => "Owner",
        CreationPolicy::Orphan => "Orphan",
        CreationPolicy::Merge => "Merge",
        CreationPolicy::None => "None",
    }
}

/// What happens to the target Secret when its ExternalSecret is gone: Kubernetes'
/// garbage collector deletes what the ExternalSecret owns (creationPolicy Owner: owner
/// reference), and nothing else. `true`: delete it.
pub fn delete_when_external_secret_gone(creation: CreationPolicy) -> bool {
    creation == CreationPolicy::Owner
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_interval_beyond_the_clock_is_never_due() {
        let now = SystemTime::now();
        let last = LastSync {
            refresh_time: Some(now - Duration::from_secs(10)),
            synced_resource_version: Some("v".into()),
            failed: false,
        };
        let huge = Duration::from_secs(u64::MAX / 2);
        assert!(!should_refresh(
            RefreshPolicy::Periodic,
            huge,
            "v",
            &last,
            now
        ));
        assert!(should_refresh(
            RefreshPolicy::Periodic,
            Duration::from_secs(5),
            "v",
            &last,
            now
        ));
    }

    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn synced(t: u64, rv: &str) -> LastSync {
        LastSync {
            refresh_time: Some(at(t)),
            synced_resource_version: Some(rv.into()),
            failed: false,
        }
    }

    #[test]
    fn refresh_intervals_parse_as_go_durations() {
        assert_eq!(refresh_interval(None).unwrap(), H);
        assert_eq!(refresh_interval(Some("0")).unwrap(), Duration::ZERO);
        assert_eq!(
            refresh_interval(Some("1h30m")).unwrap(),
            Duration::from_secs(5400)
        );
        assert!(matches!(
            refresh_interval(Some("soon")),
            Err(SyncError::InvalidSpec(_))
        ));
    }

    #[test]
    fn periodic_refresh_decisions() {
        use RefreshPolicy::Periodic;
        let never = LastSync::default();
        assert!(should_refresh(Periodic, H, "v1", &never, at(100)));
        // Within the interval, unchanged: no.
        assert!(!should_refresh(
            Periodic,
            H,
            "v1",
            &synced(100, "v1"),
            at(100 + 3599)
        ));
        // Interval passed: yes.
        assert!(should_refresh(
            Periodic,
            H,
            "v1",
            &synced(100, "v1"),
            at(100 + 3601)
        ));
        // Changed (spec, or a new force-sync annotation value): yes.
        assert!(should_refresh(
            Periodic,
            H,
            "v2",
            &synced(100, "v1"),
            at(101)
        ));
        // Refresh time in the future (clock moved back): yes.
        assert!(should_refresh(
            Periodic,
            H,
            "v1",
            &synced(200, "v1"),
            at(100)
        ));
        // Interval 0: once, then never (not even on change, as ESO).
        assert!(should_refresh(
            Periodic,
            Duration::ZERO,
            "v1",
            &never,
            at(1)
        ));
        assert!(!should_refresh(
            Periodic,
            Duration::ZERO,
            "v2",
            &synced(1, "v1"),
            at(99_999)
        ));
    }

    #[test]
    fn created_once_and_on_change() {
        let never = LastSync::default();
        assert!(should_refresh(
            RefreshPolicy::CreatedOnce,
            H,
            "v1",
            &never,
            at(1)
        ));
        assert!(!should_refresh(
            RefreshPolicy::CreatedOnce,
            H,
            "v2",
            &synced(1, "v1"),
            at(1_000_000)
        ));
        assert!(should_refresh(
            RefreshPolicy::OnChange,
            H,
            "v1",
            &never,
            at(1)
        ));
        assert!(!should_refresh(
            RefreshPolicy::OnChange,
            H,
            "v1",
            &synced(1, "v1"),
            at(1_000_000)
        ));
        assert!(should_refresh(
            RefreshPolicy::OnChange,
            H,
            "v2",
            &synced(1, "v1"),
            at(2)
        ));
    }

    #[test]
    fn needs_sync_adds_invalid_secrets_and_failures() {
        let ok = synced(100, "v1");
        assert!(!needs_sync(
            RefreshPolicy::CreatedOnce,
            H,
            "v1",
            &ok,
            true,
            at(101)
        ));
        // The Secret was removed or edited: sync again, whatever the policy.
        assert!(needs_sync(
            RefreshPolicy::CreatedOnce,
            H,
            "v1",
            &ok,
            false,
            at(101)
        ));
        let failed = LastSync { failed: true, ..ok };
        assert!(needs_sync(
            RefreshPolicy::CreatedOnce,
            H,
            "v1",
            &failed,
            true,
            at(101)
        ));
    }

    #[test]
    fn next_refresh_times() {
        let ok = synced(100, "v1");
        assert_eq!(
            next_refresh(RefreshPolicy::Periodic, H, &ok),
            Some(at(3700))
        );
        assert_eq!(
            next_refresh(RefreshPolicy::Periodic, Duration::ZERO, &ok),
            None
        );
        assert_eq!(next_refresh(RefreshPolicy::OnChange, H, &ok), None);
        assert_eq!(next_refresh(RefreshPolicy::CreatedOnce, H, &ok), None);
        assert_eq!(
            next_refresh(RefreshPolicy::Periodic, H, &LastSync::default()),
            Some(SystemTime::UNIX_EPOCH)
        );
    }

    #[test]
    fn creation_and_deletion_policy_matrix() {
        use CreationPolicy as C;
        use DeletionPolicy as D;
        use SecretAction as A;
        let act = |c, d, empty, exists| secret_action(c, d, empty, exists, "s");
        // With data: deletionPolicy does not matter.
        for d in [D::Retain, D::Delete, D::Merge] {
            for exists in [false, true] {
                assert_eq!(act(C::Owner, d, false, exists), Ok(A::Write));
                assert_eq!(act(C::Orphan, d, false, exists), Ok(A::Write));
                assert_eq!(act(C::None, d, false, exists), Ok(A::Nothing));
            }
            assert_eq!(act(C::Merge, d, false, true), Ok(A::MergeInto));
            assert_eq!(act(C::Merge, d, false, false), Ok(A::WaitForTarget));
        }
        // Without data: Retain keeps, Delete deletes (Owner only), Merge writes what is left.
        for c in [C::Owner, C::Orphan, C::Merge, C::None] {
            assert_eq!(act(c, D::Retain, true, true), Ok(A::Retain));
        }
        assert_eq!(act(C::Owner, D::Delete, true, true), Ok(A::Delete));
        assert_eq!(act(C::Owner, D::Delete, true, false), Ok(A::Delete));
        for c in [C::Orphan, C::Merge, C::None] {
            assert!(matches!(
                act(c, D::Delete, true, true),
                Err(SyncError::DeleteNotOwner { .. })
            ));
        }
        assert_eq!(act(C::Owner, D::Merge, true, true), Ok(A::Write));
        assert_eq!(act(C::Merge, D::Merge, true, true), Ok(A::MergeInto));
        assert_eq!(act(C::Merge, D::Merge, true, false), Ok(A::WaitForTarget));
        // The ExternalSecret gone: only an owned Secret goes with it.
        assert!(delete_when_external_secret_gone(C::Owner));
        for c in [C::Orphan, C::Merge, C::None] {
            assert!(!delete_when_external_secret_gone(c));
        }
    }
}
