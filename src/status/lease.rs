//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it: the holder renews `spec.renewTime` every
//! [`LeaseSettings::renew_every`]; another replica takes the Lease over only when its
//! record has not changed for `spec.leaseDurationSeconds` as measured on the replica's own
//! clock (no comparison of two machines' clocks). Every write carries the
//! `resourceVersion` it read, so of two replicas racing for one Lease exactly one wins
//! (the other gets 409 Conflict).
//!
//! A leader that could not renew for [`LeaseSettings::renew_deadline`] stops acting as
//! leader before its Lease can expire elsewhere, so two replicas never both believe they
//! lead for longer than the clock drift between them.

use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// `spec.leaseDurationSeconds`: how long a Lease not renewed stays with its holder.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// A holder that could not renew for this long stops leading (< `duration`).
    pub renew_deadline: Duration,
    /// How often a replica that does not lead tries.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// client-go's defaults (15 s lease, renew within 10 s, retry every 2 s).
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self::with_duration(namespace, name, identity, Duration::from_secs(15))
    }

    /// Settings scaled from `duration`: renew every third of it, give up at two thirds,
    /// retry every seventh (client-go's ratios).
    pub fn with_duration(
        namespace: String,
        name: String,
        identity: String,
        duration: Duration,
    ) -> Self {
        let duration = duration.max(Duration::from_secs(1));
        LeaseSettings {
            namespace,
            name,
            identity,
            duration,
            renew_every: duration / 3,
            renew_deadline: duration * 2 / 3,
            retry_every: (duration / 7).max(Duration::from_millis(200)),
        }
    }
}

fn lease_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::coordination::v1::Lease>(&())
}

/// RFC 3339 with microseconds (the Lease's `MicroTime`).
fn micro_time_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let micros = now.microsecond();
    let base = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    // `…:SSZ` → `…:SS.uuuuuuZ`
    match base.strip_suffix('Z') {
        Some(head) => format!("{head}.{micros:06}Z"),
        None => base,
    }
}

/// What this replica last saw of the Lease, on its own clock.
#[derive(Debug, Default)]
struct Seen {
    version: Option<String>,
    since: Option<Instant>,
}

/// Until when this replica may act as leader: the last successful renewal plus the renew
/// deadline (`None`: it does not lead). Readers compare it with the clock at the moment
/// they act ([`leads`]), so a renewal that hangs cannot stretch a term.
pub type Term = Option<Instant>;

/// Whether the term in `leading` lasts at this instant.
pub fn leads(leading: &watch::Receiver<Term>) -> bool {
    leading.borrow().is_some_and(|until| Instant::now() < until)
}

/// Runs the election until the task is dropped, telling `leading` until when this replica
/// leads. Errors of the API are logged (once per streak) and retried; each attempt is cut
/// at the renew deadline.
pub async fn run(client: kube::Client, settings: LeaseSettings, leading: watch::Sender<Term>) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &settings.namespace, &lease_resource());
    let mut seen = Seen::default();
    let mut failing = false;
    loop {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(
            settings.renew_deadline,
            attempt(&api, &settings, &mut seen),
        )
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the API did not answer within the renew deadline".to_string()),
        };
        let term: Term = match outcome {
            Ok(leads) => {
                if failing {
                    failing = false;
                    tracing::info!(lease = %settings.name, "leader election: the API answers again");
                }
                // The term counts from before the request: the Lease may have been written
                // at any point of it.
                leads.then(|| started + settings.renew_deadline)
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(lease = %settings.name, error = %e, "leader election: cannot reach the Lease");
                }
                // The current term runs out on its own.
                *leading.borrow()
            }
        };
        let now_leading = term.is_some_and(|t| Instant::now() < t);
        let was_leading = leading.borrow().is_some_and(|t| started < t);
        if now_leading != was_leading {
            tracing::info!(identity = %settings.identity, lease = %settings.name, leading = now_leading, "leader election");
        }
        leading.send_replace(term.filter(|_| now_leading));
        let pause = if now_leading {
            settings.renew_every
        } else {
            jitter(settings.retry_every)
        };
        tokio::time::sleep(pause).await;
    }
}

fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.2)
}

/// One round: create, renew or take over the Lease. `Ok(true)` when this replica holds it.
async fn attempt(
    api: &Api<DynamicObject>,
    settings: &LeaseSettings,
    seen: &mut Seen,
) -> Result<bool, kube::Error> {
    let now = micro_time_now();
    let secs = i64::try_from(settings.duration.as_secs()).unwrap_or(i64::MAX);
    let Some(current) = api.get_opt(&settings.name).await? else {
        let lease: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": settings.name, "namespace": settings.namespace},
            "spec": {
                "holderIdentity": settings.identity,
                "leaseDurationSeconds": secs,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
        }))
        .map_err(kube::Error::SerdeError)?;
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = current.data.get("spec").cloned().unwrap_or(Value::Null);
    let holder = spec
        .get("holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = current.metadata.resource_version.clone();
    if seen.version != version {
        seen.version = version;
        seen.since = Some(Instant::now());
    }
    let mut next = current.clone();
    if holder == settings.identity {
        next.data["spec"]["renewTime"] = json!(now);
        next.data["spec"]["leaseDurationSeconds"] = json!(secs);
    } else {
        let held_for = spec
            .get("leaseDurationSeconds")
            .and_then(Value::as_u64)
            .map_or(settings.duration, Duration::from_secs);
        let expired = holder.is_empty() || seen.since.is_none_or(|t| t.elapsed() >= held_for);
        if !expired {
            return Ok(false);
        }
        let transitions = spec
            .get("leaseTransitions")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        next.data["spec"] = json!({
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": secs,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions.saturating_add(1),
        });
    }
    match api
        .replace(&settings.name, &PostParams::default(), &next)
        .await
    {
        Ok(written) => {
            seen.version = written.metadata.resource_version;
            seen.since = Some(Instant::now());
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_has_microseconds_and_utc() {
        let t = micro_time_now();
        assert!(t.ends_with('Z'), "{t}");
        let frac = t.rsplit('.').next().unwrap();
        assert_eq!(frac.len(), 7, "{t}");
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok()
        );
    }

    #[test]
    fn settings_keep_client_go_ratios() {
        let s = LeaseSettings::new("ns".into(), "l".into(), "me".into());
        assert_eq!(s.duration, Duration::from_secs(15));
        assert_eq!(s.renew_every, Duration::from_secs(5));
        assert_eq!(s.renew_deadline, Duration::from_secs(10));
        assert!(s.renew_deadline < s.duration);
    }
}
