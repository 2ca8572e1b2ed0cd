//! Writes `Ready` conditions, only while this replica leads, and only where the object's
//! status differs from what it should be ([`Desired::differs`]) and this replica has not
//! already written that condition for that generation. Our writes come back through the
//! watch as unchanged content (status is not content), so nothing loops. Writes are
//! paced ([`MIN_WRITE_GAP`]) so that a first sync of many objects does not flood the API
//! server; a failed write is retried at the next resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::lease::{Term, leads};
use super::{Desired, ReadyCondition};
use crate::metrics::METRICS;
use crate::source::ObjectKey;
use crate::source::kubernetes::condition_type;

/// Least time between two status writes (at most 50 per second).
pub const MIN_WRITE_GAP: Duration = Duration::from_millis(20);

/// How often everything is compared again (a failed write retried, a lost leadership's
/// writes redone).
pub const RESYNC: Duration = Duration::from_secs(30);

/// How long one status write may take (then it counts as failed: retried at the resync).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The field manager of our writes.
pub const FIELD_MANAGER: &str = "esi-server";

/// Runs until the task is dropped: whenever `desired` changes, leadership is gained, or
/// every [`RESYNC`], writes what differs (while `leading` says so).
pub async fn run(
    client: kube::Client,
    mut desired: watch::Receiver<Arc<Vec<Desired>>>,
    mut leading: watch::Receiver<Term>,
) {
    // What this replica wrote: (generation, condition) per object.
    let mut written: HashMap<ObjectKey, (Option<i64>, ReadyCondition)> = HashMap::new();
    let mut was_leading = false;
    // An interval, not a sleep in the select: changes arrive more often than the resync
    // period, and a sleep restarted by each would never fire.
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = resync.tick() => written.clear(),
        }
        // A new term (after not leading): what an earlier term wrote may have been
        // overwritten since.
        let now_leading = leads(&leading);
        if now_leading && !was_leading {
            written.clear();
        }
        was_leading = now_leading;
        if !now_leading {
            continue;
        }
        let work = desired.borrow().clone();
        for d in work.iter() {
            if !d.differs() || written.get(&d.key) == Some(&(d.generation, d.condition.clone())) {
                continue;
            }
            // Checked at each write: a term that ran out stops the writes at once.
            if !leads(&leading) {
                METRICS
                    .status_writes
                    .with_label_values(&["not_leader"])
                    .inc();
                break;
            }
            let written_now = tokio::time::timeout(WRITE_TIMEOUT, write(&client, d)).await;
            match written_now.unwrap_or_else(|_| {
                Err(kube::Error::Service(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                ))))
            }) {
                Ok(()) => {
                    METRICS.status_writes.with_label_values(&["ok"]).inc();
                    written.insert(d.key.clone(), (d.generation, d.condition.clone()));
                }
                Err(e) => {
                    METRICS.status_writes.with_label_values(&["error"]).inc();
                    tracing::debug!(object = %d.key, error = %e, "status not written; retried at the next resync");
                }
            }
            tokio::time::sleep(MIN_WRITE_GAP).await;
        }
    }
}

async fn write(client: &kube::Client, d: &Desired) -> Result<(), kube::Error> {
    let ObjectKey::Resource {
        namespace, name, ..
    } = &d.key
    else {
        return Ok(());
    };
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &d.resource),
        None => Api::all_with(client.clone(), &d.resource),
    };
    let status = d.condition.status();
    // The transition time moves only when the status does.
    let since = d
        .observed
        .as_ref()
        .filter(|o| o.status == status)
        .and_then(|o| o.last_transition_time.clone())
        .unwrap_or_else(now);
    let kind = d.resource.kind.as_str();
    let condition = json!({
        "type": condition_type(kind),
        "status": status,
        "reason": d.condition.reason,
        "message": d.condition.message,
        "lastTransitionTime": since,
        "observedGeneration": d.generation,
    });
    // A JSON patch of our one condition, so that conditions other controllers write (ESO's
    // `Ready` on a ClusterSecretStore) are left as they are; `test` makes it fail (and be
    // retried at the resync) if the list moved since it was observed.
    let layout = d.layout;
    let mut ops = match layout.index {
        Some(i) => vec![
            json!({"op": "test", "path": format!("/status/conditions/{i}/type"), "value": condition_type(kind)}),
            json!({"op": "replace", "path": format!("/status/conditions/{i}"), "value": condition}),
        ],
        None if layout.has_conditions => {
            vec![json!({"op": "add", "path": "/status/conditions/-", "value": condition})]
        }
        None if layout.has_status => {
            vec![json!({"op": "add", "path": "/status/conditions", "value": [condition]})]
        }
        None => vec![json!({"op": "add", "path": "/status", "value": {"conditions": [condition]}})],
    };
    // Our own kinds' status is ours: its observedGeneration too.
    if kind != "ClusterSecretStore" {
        ops.push(json!({"op": "add", "path": "/status/observedGeneration", "value": d.generation}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
