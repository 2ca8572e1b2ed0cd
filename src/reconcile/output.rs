//! `esi-server reconcile --manifests DIR --output OUT`: the whole reconcile path without a
//! cluster. Each ExternalSecret of DIR is synced and its Secret written as YAML:
//!
//! - `OUT/<namespace>/<secret>.yaml`: the `v1` Secret (data base64; owner reference for
//!   creationPolicy Owner), mode 0400;
//! - `OUT/<namespace>/<externalsecret>.externalsecret-status.yaml`: the ExternalSecret's
//!   ESO status (`Ready` condition with reason and message, `refreshTime`,
//!   `syncedResourceVersion`, `binding`), mode 0644;
//! - `OUT/.esi-reconcile-state.json` (mode 0600): what the last passes wrote and the
//!   revocation state of every generated credential still held, so that a rerun rewrites
//!   only what changed, removes what its ExternalSecret no longer produces, and revokes
//!   credentials that are replaced or whose ExternalSecret is gone.
//!
//! A file is rewritten only when its bytes change. An ExternalSecret that fails keeps its
//! previous Secret file (as ESO leaves the Secret) and gets `Ready=False`; every other one
//! is still written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::files::{WriteOutcome, read_regular_file, write_if_changed, write_if_changed_mode};
use crate::providers::ProviderSettings;
use crate::resources::external_secret::{CreationPolicy, RefreshPolicy};
use crate::source::LoadError;
use crate::source::dir::DirectoryScanner;

use super::SyncError;
use super::error::{REASON_DELETED, REASON_MISSING, REASON_SYNCED, REASON_SYNCED_ERROR};
use super::inventory::{ExternalSecretObject, Inventory, InventoryBuilder};
use super::policy::{self, LastSync, SecretAction};
use super::sync::{
    self, DesiredSecret, EXTERNAL_SECRET_API_VERSION, IssuedCredential, SyncOptions,
};

/// Suffix of status file names (`<externalsecret>.externalsecret-status.yaml`); a target
/// Secret name may not end with it.
pub const STATUS_SUFFIX: &str = ".externalsecret-status";
/// The state file in OUT.
pub const STATE_FILE: &str = ".esi-reconcile-state.json";
/// Largest state file read (bytes).
const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest Secret file read back to compare with the state (bytes; a larger one is
/// treated as not ours and rewritten).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most credentials kept waiting for revocation (expired ones are dropped first: they
/// lapse on their own).
const MAX_PENDING_REVOCATIONS: usize = 10_000;

/// What `reconcile --output` needs.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Directory of manifests (recursive).
    pub manifests: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// `--controller-class`.
    pub controller_class: String,
    /// Backend call bounds.
    pub provider_settings: ProviderSettings,
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// OUT overlaps the manifests directory (the Secrets written would be read back).
    #[error("--output {output} and --manifests {manifests} must not contain one another")]
    Overlap {
        /// OUT.
        output: String,
        /// DIR.
        manifests: String,
    },
    /// The state file cannot be read or written.
    #[error("state file {path}: {reason}")]
    State {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// OUT cannot be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// One pass's result.
#[derive(Debug, Default)]
pub struct RunReport {
    /// ExternalSecrets synced this pass.
    pub synced: usize,
    /// ExternalSecrets not due (refresh policy) and left as they were.
    pub unchanged: usize,
    /// ExternalSecrets of another controller class, left alone.
    pub skipped: usize,
    /// ExternalSecrets that failed: `namespace/name` and the status message.
    pub failed: Vec<(String, String)>,
    /// Files written (created or replaced) or removed.
    pub files_changed: usize,
    /// Manifests that could not be read, objects that could not be built.
    pub problems: Vec<LoadError>,
    /// Credentials that could not be revoked (kept for the next pass): generator and why.
    pub revocation_failures: Vec<String>,
}

impl RunReport {
    /// Whether the pass should end the process with a failure status.
    pub fn is_failure(&self) -> bool {
        !self.failed.is_empty() || !self.problems.is_empty()
    }
}

/// ESO's status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    status: bool,
    reason: String,
    message: String,
    /// Seconds since the epoch.
    last_transition_time: u64,
}

/// The status kept per ExternalSecret (and rendered into its status file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<Condition>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    synced_resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binding: Option<String>,
}

impl Status {
    /// ESO's `SetExternalSecretCondition`: the transition time moves only when the status
    /// (True/False) changes.
    fn set_ready(&mut self, status: bool, reason: &str, message: String, now: u64) {
        let last_transition_time = match &self.ready {
            Some(c) if c.status == status => c.last_transition_time,
            _ => now,
        };
        self.ready = Some(Condition {
            status,
            reason: reason.to_string(),
            message,
            last_transition_time,
        });
    }
}

/// What the state remembers of one ExternalSecret.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EsState {
    /// The target Secret's name.
    secret: String,
    creation_policy: CreationPolicy,
    /// SHA-256 (hex) of the Secret file this reconciler wrote last; None when it wrote none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_sha256: Option<String>,
    /// ESO data hash of an immutable Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    immutable_data_hash: Option<String>,
    status: Status,
    /// Generated credentials the Secret holds now (revoked when replaced or gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<IssuedCredential>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    version: u32,
    /// By `namespace/name`.
    external_secrets: BTreeMap<String, EsState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending_revocations: Vec<IssuedCredential>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(s: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A YAML scalar: plain when it cannot be read as anything but this string, else
/// double-quoted with JSON escapes (valid YAML).
fn scalar(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/+=-".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

fn push_map(out: &mut String, indent: &str, key: &str, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    out.push_str(&format!("{indent}{key}:\n"));
    for (k, v) in map {
        out.push_str(&format!("{indent}  {}: {}\n", scalar(k), scalar(v)));
    }
}

/// The Secret as YAML: deterministic (sorted keys, fixed layout), data base64.
pub fn secret_yaml(s: &DesiredSecret) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n");
    out.push_str(&format!(
        "  name: {}\n  namespace: {}\n",
        scalar(&s.name),
        scalar(&s.namespace)
    ));
    push_map(&mut out, "  ", "labels", &s.labels);
    push_map(&mut out, "  ", "annotations", &s.annotations);
    if let Some(o) = &s.owner {
        out.push_str("  ownerReferences:\n");
        out.push_str(&format!(
            "    - apiVersion: {}\n",
            scalar(EXTERNAL_SECRET_API_VERSION)
        ));
        out.push_str("      kind: ExternalSecret\n");
        out.push_str(&format!("      name: {}\n", scalar(&o.name)));
        if let Some(uid) = &o.uid {
            out.push_str(&format!("      uid: {}\n", scalar(uid)));
        }
        out.push_str("      controller: true\n      blockOwnerDeletion: true\n");
    }
    if s.immutable {
        out.push_str("immutable: true\n");
    }
    out.push_str(&format!("type: {}\n", scalar(&s.type_)));
    if s.data.is_empty() {
        out.push_str("data: {}\n");
    } else {
        out.push_str("data:\n");
        for (k, v) in &s.data {
            let encoded = base64::engine::general_purpose::STANDARD.encode(v);
            out.push_str(&format!("  {}: {}\n", scalar(k), scalar(&encoded)));
        }
    }
    out
}

fn status_yaml(es: &ExternalSecretObject, status: &Status) -> String {
    let mut out = format!(
        "apiVersion: {}\nkind: ExternalSecret\nmetadata:\n  name: {}\n  namespace: {}\nstatus:\n",
        scalar(EXTERNAL_SECRET_API_VERSION),
        scalar(&es.name),
        scalar(&es.namespace)
    );
    if let Some(b) = &status.binding {
        out.push_str(&format!("  binding:\n    name: {}\n", scalar(b)));
    }
    if let Some(c) = &status.ready {
        out.push_str("  conditions:\n    - type: Ready\n");
        out.push_str(&format!(
            "      status: \"{}\"\n      reason: {}\n      message: {}\n      lastTransitionTime: {}\n",
            if c.status { "True" } else { "False" },
            scalar(&c.reason),
            scalar(&c.message),
            scalar(&rfc3339(c.last_transition_time)),
        ));
    }
    if let Some(t) = status.refresh_time {
        out.push_str(&format!("  refreshTime: {}\n", scalar(&rfc3339(t))));
    }
    if let Some(v) = &status.synced_resource_version {
        out.push_str(&format!("  syncedResourceVersion: {}\n", scalar(v)));
    }
    out
}

/// The `--output` reconciler. Keep one per process: its scanner and inventory builder
/// remember what they read (stores are not rebuilt when nothing changed).
#[derive(Debug)]
pub struct OutputReconciler {
    opts: OutputOptions,
    scanner: DirectoryScanner,
    builder: InventoryBuilder,
    /// Last message logged per failing ExternalSecret (warn once per change, not per pass).
    logged: HashMap<String, String>,
}

fn io_error(path: &Path, source: std::io::Error) -> OutputError {
    OutputError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn remove_file(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the Secret file at `path` only when it still holds the bytes this reconciler
/// wrote (`sha256`, hex): a file another ExternalSecret wrote since (it took the same
/// target name) or any other file is left alone, as ESO deletes only Secrets it owns.
fn remove_if_ours(path: &Path, sha256: Option<&str>) -> std::io::Result<bool> {
    let Some(expected) = sha256 else {
        return Ok(false);
    };
    match read_regular_file(path, MAX_SECRET_FILE_BYTES)? {
        Some(bytes) if sha256_hex(&bytes) == expected => remove_file(path),
        _ => Ok(false),
    }
}

impl OutputReconciler {
    /// A reconciler of `opts`; refuses an OUT inside DIR or DIR inside OUT.
    pub fn new(opts: OutputOptions) -> Result<Self, OutputError> {
        let existed = opts.output.exists();
        std::fs::create_dir_all(&opts.output).map_err(|e| io_error(&opts.output, e))?;
        let out = std::fs::canonicalize(&opts.output).map_err(|e| io_error(&opts.output, e))?;
        let dir = std::fs::canonicalize(&opts.manifests).unwrap_or_else(|_| opts.manifests.clone());
        if out.starts_with(&dir) || dir.starts_with(&out) {
            if !existed {
                let _ = std::fs::remove_dir(&opts.output);
            }
            return Err(OutputError::Overlap {
                output: opts.output.display().to_string(),
                manifests: opts.manifests.display().to_string(),
            });
        }
        Ok(OutputReconciler {
            scanner: DirectoryScanner::new(opts.manifests.clone(), None),
            builder: InventoryBuilder::new(opts.provider_settings.clone()),
            opts,
            logged: HashMap::new(),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.opts.output.join(STATE_FILE)
    }

    fn load_state(&self) -> Result<State, OutputError> {
        let path = self.state_path();
        let fail = |reason: String| OutputError::State {
            path: path.display().to_string(),
            reason,
        };
        let bytes = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(fail(e.to_string())),
            Ok(m) if !m.is_file() => return Err(fail("not a regular file".into())),
            Ok(_) => read_regular_file(&path, MAX_STATE_BYTES)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| {
                    fail(format!(
                        "not a regular file of at most {MAX_STATE_BYTES} bytes"
                    ))
                })?,
        };
        // Refused, not reset: it holds what revokes issued credentials.
        serde_json::from_slice(&bytes)
            .map_err(|_| fail("not a reconcile state file (fix or remove it)".into()))
    }

    fn save_state(&self, state: &State) -> Result<bool, OutputError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| OutputError::State {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_if_changed_mode(&path, &bytes, 0o600)
            .map(|o| o == WriteOutcome::Written)
            .map_err(|e| OutputError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    fn secret_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.opts
            .output
            .join(namespace)
            .join(format!("{name}.yaml"))
    }

    fn status_path(&self, es: &ExternalSecretObject) -> PathBuf {
        self.opts
            .output
            .join(&es.namespace)
            .join(format!("{}{STATUS_SUFFIX}.yaml", es.name))
    }

    /// One pass at time `now`: read what changed, sync what is due, write what changed,
    /// clean up after ExternalSecrets that are gone, revoke what is no longer held.
    pub async fn run_once(&mut self, now: SystemTime) -> Result<RunReport, OutputError> {
        let builder = &mut self.builder;
        self.scanner.scan(&mut |e| builder.apply(e));
        let inv = self.builder.build();
        let mut state = self.load_state()?;
        let mut report = RunReport {
            problems: inv.problems.clone(),
            ..RunReport::default()
        };
        let opts = SyncOptions {
            controller_class: self.opts.controller_class.clone(),
            templates: super::template::engine(),
        };
        let now_s = secs(now);
        let mut seen: HashSet<String> = HashSet::new();
        // Target Secrets claimed this pass: (namespace, name) → ExternalSecret name.
        let mut claimed: HashMap<(String, String), String> = HashMap::new();

        for es in inv.external_secrets() {
            let id = format!("{}/{}", es.namespace, es.name);
            seen.insert(id.clone());
            if !sync::is_managed(es, &inv, &opts) {
                report.skipped += 1;
                continue;
            }
            self.reconcile_one(es, &inv, &opts, now, &mut state, &mut claimed, &mut report)
                .await;
        }

        // ExternalSecrets that are gone: the Secret goes with them when they owned it
        // (Kubernetes' garbage collection), their status goes, their credentials are revoked.
        let gone: Vec<String> = state
            .external_secrets
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            let Some(old) = state.external_secrets.remove(&id) else {
                continue;
            };
            let Some((namespace, name)) = id.split_once('/') else {
                continue;
            };
            if !safe_names(namespace, name)
                || !(old.secret.is_empty() || sync::is_object_name(&old.secret))
            {
                continue;
            }
            if policy::delete_when_external_secret_gone(old.creation_policy) {
                let path = self.secret_path(namespace, &old.secret);
                if remove_if_ours(&path, old.secret_sha256.as_deref())
                    .map_err(|e| io_error(&path, e))?
                {
                    report.files_changed += 1;
                }
            }
            let status = self
                .opts
                .output
                .join(namespace)
                .join(format!("{name}{STATUS_SUFFIX}.yaml"));
            if remove_file(&status).map_err(|e| io_error(&status, e))? {
                report.files_changed += 1;
            }
            state.pending_revocations.extend(old.credentials);
            tracing::info!(external_secret = %id, "ExternalSecret gone: cleaned up");
        }

        self.revoke_pending(&inv, &mut state, now_s, &mut report)
            .await;
        state.version = 1;
        if self.save_state(&state)? {
            report.files_changed += 1;
        }
        Ok(report)
    }

    async fn revoke_pending(
        &self,
        inv: &Inventory,
        state: &mut State,
        now: u64,
        report: &mut RunReport,
    ) {
        let pending = std::mem::take(&mut state.pending_revocations);
        let mut kept = Vec::new();
        for cred in pending {
            let key = cred.generator_key();
            let generator = match inv.generator(&key) {
                Some(Ok(g)) => g.clone(),
                _ => {
                    report.revocation_failures.push(format!(
                        "{} {}/{}: generator not available",
                        key.kind, key.namespace, key.name
                    ));
                    kept.push(cred);
                    continue;
                }
            };
            match generator.revoke(&cred.state).await {
                Ok(()) => {
                    tracing::info!(generator = %format!("{} {}/{}", key.kind, key.namespace, key.name),
                        state = %cred.state.fingerprint(), "revoked a generated credential");
                }
                Err(e) => {
                    report
                        .revocation_failures
                        .push(format!("{} {}/{}: {e}", key.kind, key.namespace, key.name));
                    kept.push(cred);
                }
            }
        }
        // Bounded: credentials past their expiry lapse on their own and go first.
        if kept.len() > MAX_PENDING_REVOCATIONS {
            kept.retain(|c| c.expires_at.is_none_or(|t| t > now));
            let excess = kept.len().saturating_sub(MAX_PENDING_REVOCATIONS);
            if excess > 0 {
                tracing::warn!(
                    dropped = excess,
                    "too many credentials waiting for revocation; the oldest are forgotten"
                );
                kept.drain(..excess);
            }
        }
        state.pending_revocations = kept;
    }

    #[allow(clippy::too_many_arguments)]
    async fn reconcile_one(
        &mut self,
        es: &ExternalSecretObject,
        inv: &Inventory,
        opts: &SyncOptions,
        now: SystemTime,
        state: &mut State,
        claimed: &mut HashMap<(String, String), String>,
        report: &mut RunReport,
    ) {
        let id = format!("{}/{}", es.namespace, es.name);
        // Names become paths under OUT: only Kubernetes names, never `..` or `/`.
        if !safe_names(&es.namespace, &es.name) {
            report.failed.push((
                id,
                "invalid ExternalSecret: namespace or name is not a Kubernetes name (nothing written)".into(),
            ));
            return;
        }
        let now_s = secs(now);
        let mut entry = state.external_secrets.get(&id).cloned().unwrap_or_default();
        let started = std::time::Instant::now();
        let outcome = self
            .decide_and_sync(es, inv, opts, now, &mut entry, claimed, report)
            .await;
        let mut issued_now = Vec::new();
        match outcome {
            Ok(Synced::NotDue) => {
                report.unchanged += 1;
            }
            Ok(Synced::Done {
                reason,
                message,
                binding,
                issued,
            }) => {
                report.synced += 1;
                super::es_metrics::record_sync(
                    &es.name,
                    &es.namespace,
                    reason != REASON_MISSING,
                    false,
                    started.elapsed(),
                );
                entry
                    .status
                    .set_ready(true, reason, message.to_string(), now_s);
                entry.status.refresh_time = Some(now_s);
                entry.status.synced_resource_version = Some(es.resource_version.clone());
                if binding.is_some() {
                    entry.status.binding = binding;
                }
                // The new credentials replace the old ones, which are revoked.
                state
                    .pending_revocations
                    .extend(std::mem::replace(&mut entry.credentials, issued));
                self.logged.remove(&id);
            }
            Err((e, issued)) => {
                super::es_metrics::record_sync(
                    &es.name,
                    &es.namespace,
                    false,
                    true,
                    started.elapsed(),
                );
                issued_now = issued;
                let message = e.message();
                if self.logged.get(&id) != Some(&message) {
                    tracing::warn!(external_secret = %id, reason = REASON_SYNCED_ERROR, message = %message, "sync failed");
                    self.logged.insert(id.clone(), message.clone());
                }
                entry
                    .status
                    .set_ready(false, e.reason(), message.clone(), now_s);
                report.failed.push((id.clone(), message));
            }
        }
        // Credentials of a failed sync were never handed out: revoke them.
        state.pending_revocations.extend(issued_now);
        let status = status_yaml(es, &entry.status);
        let path = self.status_path(es);
        match write_if_changed_mode(&path, status.as_bytes(), 0o644) {
            Ok(WriteOutcome::Written) => report.files_changed += 1,
            Ok(WriteOutcome::Unchanged) => {}
            Err(e) => report
                .failed
                .push((id.clone(), format!("cannot write {}: {e}", path.display()))),
        }
        state.external_secrets.insert(id, entry);
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide_and_sync(
        &self,
        es: &ExternalSecretObject,
        inv: &Inventory,
        opts: &SyncOptions,
        now: SystemTime,
        entry: &mut EsState,
        claimed: &mut HashMap<(String, String), String>,
        report: &mut RunReport,
    ) -> Result<Synced, (SyncError, Vec<IssuedCredential>)> {
        let fail = |e: SyncError| (e, Vec::new());
        let spec = es
            .spec
            .as_ref()
            .map_err(|e| fail(SyncError::InvalidSpec(e.clone())))?;
        sync::validate(es, spec).map_err(fail)?;
        let target = spec.target.clone();
        let secret_name = sync::target_name(es, spec);
        let writes = target.creation_policy != CreationPolicy::None;
        if writes {
            let key = (es.namespace.clone(), secret_name.clone());
            if let Some(owner) = claimed.get(&key) {
                return Err(fail(SyncError::Owned {
                    secret: secret_name,
                    owner: owner.clone(),
                }));
            }
            claimed.insert(key, es.name.clone());
        }
        let secret_path = self.secret_path(&es.namespace, &secret_name);
        // Bounded, regular files only: a planted symlink or FIFO reads as "no file".
        let file_hash = read_regular_file(&secret_path, MAX_SECRET_FILE_BYTES)
            .ok()
            .flatten()
            .map(|b| sha256_hex(&b));
        let secret_valid = !writes
            || (entry.secret == secret_name
                && entry.secret_sha256.is_some()
                && entry.secret_sha256 == file_hash);
        let interval = policy::refresh_interval(spec.refresh_interval.as_deref()).map_err(fail)?;
        let last = LastSync {
            refresh_time: entry
                .status
                .refresh_time
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            synced_resource_version: entry.status.synced_resource_version.clone(),
            failed: entry.status.ready.as_ref().is_some_and(|c| !c.status),
        };
        let policy_ = spec.refresh_policy.unwrap_or(RefreshPolicy::Periodic);
        if !policy::needs_sync(
            policy_,
            interval,
            &es.resource_version,
            &last,
            secret_valid,
            now,
        ) {
            return Ok(Synced::NotDue);
        }

        let mut issued = Vec::new();
        let desired = match sync::sync(es, inv, opts, &mut issued).await {
            Ok(d) => d,
            Err(e) => return Err((e, issued)),
        };
        let existing = inv.secret(&es.namespace, &secret_name);
        // Our own earlier file counts as existing (Kubernetes would have it), except for
        // creationPolicy Merge: the Secret merged into is the manifest in DIR, and when that
        // is gone, so is the Secret (ESO waits: SecretMissing) — never recreated from our
        // own output with the base's keys and type lost.
        let exists = existing.is_some()
            || (target.creation_policy != CreationPolicy::Merge
                && entry.secret == secret_name
                && entry.secret_sha256.is_some());
        let action = policy::secret_action(
            target.creation_policy,
            target.deletion_policy,
            desired.provider_data_empty,
            exists,
            &secret_name,
        )
        .map_err(|e| (e, issued.clone()))?;

        // A Secret previously written elsewhere by this ExternalSecret (target renamed) is
        // removed when it owned it (ESO's deleteOrphanedSecrets).
        if entry.secret_sha256.is_some()
            && sync::is_object_name(&entry.secret)
            && entry.secret != secret_name
        {
            if entry.creation_policy == CreationPolicy::Owner {
                let old = self.secret_path(&es.namespace, &entry.secret);
                if remove_if_ours(&old, entry.secret_sha256.as_deref()).unwrap_or(false) {
                    report.files_changed += 1;
                }
            }
            entry.secret_sha256 = None;
            entry.immutable_data_hash = None;
        }
        entry.secret = secret_name.clone();
        entry.creation_policy = target.creation_policy;

        let (reason, message, binding) = match action {
            SecretAction::Write | SecretAction::MergeInto => {
                let final_secret = match (action, existing) {
                    (SecretAction::MergeInto, Some(base)) => desired.merged_into(base),
                    // Merging into our own earlier output: that file is the Secret.
                    (SecretAction::MergeInto, None) => desired,
                    // Owner/Orphan over a Secret that exists: ESO updates it, keeping its
                    // type and metadata, replacing its data.
                    (_, Some(base)) => {
                        let mut over = base_as_desired(base, &desired);
                        over.immutable = desired.immutable || base.immutable;
                        over.sealed()
                    }
                    (_, None) => desired,
                };
                let new_hash = sync::data_hash(&final_secret.data);
                let immutable_before = entry.immutable_data_hash.clone().or_else(|| {
                    existing
                        .filter(|b| b.immutable)
                        .map(|b| sync::data_hash(&b.data))
                });
                if immutable_before.is_some_and(|h| h != new_hash) {
                    return Err((
                        SyncError::Immutable {
                            secret: secret_name,
                        },
                        issued,
                    ));
                }
                let bytes = secret_yaml(&final_secret);
                match write_if_changed(&secret_path, bytes.as_bytes()) {
                    Ok(WriteOutcome::Written) => report.files_changed += 1,
                    Ok(WriteOutcome::Unchanged) => {}
                    Err(e) => {
                        return Err((
                            SyncError::InvalidSpec(format!(
                                "cannot write {}: {e}",
                                secret_path.display()
                            )),
                            issued,
                        ));
                    }
                }
                entry.secret_sha256 = Some(sha256_hex(bytes.as_bytes()));
                entry.immutable_data_hash = final_secret.immutable.then_some(new_hash);
                (REASON_SYNCED, "secret synced", Some(secret_name))
            }
            SecretAction::Delete => {
                if remove_if_ours(&secret_path, entry.secret_sha256.as_deref()).unwrap_or(false) {
                    report.files_changed += 1;
                }
                entry.secret_sha256 = None;
                entry.immutable_data_hash = None;
                (
                    REASON_DELETED,
                    "secret deleted due to DeletionPolicy=Delete",
                    None,
                )
            }
            SecretAction::Retain => (
                REASON_SYNCED,
                "secret retained due to DeletionPolicy=Retain",
                None,
            ),
            SecretAction::WaitForTarget => {
                // The merged output of a Secret that no longer exists goes with it.
                if remove_if_ours(&secret_path, entry.secret_sha256.as_deref()).unwrap_or(false) {
                    report.files_changed += 1;
                }
                entry.secret_sha256 = None;
                entry.immutable_data_hash = None;
                (
                    REASON_MISSING,
                    "secret will not be created due to CreationPolicy=Merge",
                    None,
                )
            }
            SecretAction::Nothing => (REASON_SYNCED, "secret synced", None),
        };
        Ok(Synced::Done {
            reason,
            message,
            binding,
            issued,
        })
    }
}

/// Whether a namespace and an object name are Kubernetes names (so, safe path components).
fn safe_names(namespace: &str, name: &str) -> bool {
    crate::generators::is_namespace_name(namespace) && sync::is_object_name(name)
}

/// An existing Secret's type and metadata with our labels and annotations over them.
fn base_as_desired(
    base: &super::inventory::ExistingSecret,
    desired: &DesiredSecret,
) -> DesiredSecret {
    let mut labels = base.labels.clone();
    labels.remove(sync::LABEL_OWNER);
    labels.extend(desired.labels.clone());
    let mut annotations = base.annotations.clone();
    annotations.extend(desired.annotations.clone());
    DesiredSecret {
        type_: base.type_.clone(),
        labels,
        annotations,
        ..desired.clone()
    }
}

enum Synced {
    NotDue,
    Done {
        reason: &'static str,
        message: &'static str,
        binding: Option<String>,
        issued: Vec<IssuedCredential>,
    },
}

/// Runs passes: once (`interval` None), else every `interval` until `shutdown` resolves.
/// Returns the last pass's report.
pub async fn run(
    opts: OutputOptions,
    interval: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<RunReport, OutputError> {
    let mut reconciler = OutputReconciler::new(opts)?;
    let Some(interval) = interval else {
        return reconciler.run_once(SystemTime::now()).await;
    };
    tokio::pin!(shutdown);
    // Problems and pending revocations are logged when they change, not on every pass.
    let mut logged: (Vec<LoadError>, Vec<String>) = (Vec::new(), Vec::new());
    loop {
        let report = reconciler.run_once(SystemTime::now()).await?;
        tracing::debug!(
            synced = report.synced,
            failed = report.failed.len(),
            "reconcile pass done"
        );
        if logged.0 != report.problems {
            for p in &report.problems {
                tracing::warn!(problem = %p, "manifest problem");
            }
            logged.0 = report.problems.clone();
        }
        if logged.1 != report.revocation_failures {
            for r in &report.revocation_failures {
                tracing::warn!(credential = %r, "revocation pending; retried on the next pass");
            }
            logged.1 = report.revocation_failures.clone();
        }
        tokio::select! {
            () = &mut shutdown => return Ok(report),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ESO's metrics are recorded in directory mode too (names and labels as ESO's).
    #[tokio::test]
    async fn a_pass_records_esos_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("m");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("all.yaml"),
            r#"apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: fake}
spec: {provider: {fake: {data: [{key: db, value: x}]}}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: metrics-good, namespace: metrics-ns}
spec:
  secretStoreRef: {kind: ClusterSecretStore, name: fake}
  data: [{secretKey: a, remoteRef: {key: db}}]
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: metrics-bad, namespace: metrics-ns}
spec:
  secretStoreRef: {kind: ClusterSecretStore, name: nope}
  data: [{secretKey: a, remoteRef: {key: db}}]
"#,
        )
        .unwrap();
        let mut r = OutputReconciler::new(OutputOptions {
            manifests,
            output: dir.path().join("out"),
            controller_class: String::new(),
            provider_settings: ProviderSettings::default(),
        })
        .unwrap();
        r.run_once(SystemTime::now()).await.unwrap();
        let text = crate::metrics::METRICS.render();
        for line in [
            r#"externalsecret_sync_calls_total{name="metrics-good",namespace="metrics-ns"} 1"#,
            r#"externalsecret_sync_calls_total{name="metrics-bad",namespace="metrics-ns"} 1"#,
            r#"externalsecret_sync_calls_error{name="metrics-bad",namespace="metrics-ns"} 1"#,
            r#"externalsecret_status_condition{condition="Ready",name="metrics-good",namespace="metrics-ns",status="True"} 1"#,
            r#"externalsecret_status_condition{condition="Ready",name="metrics-bad",namespace="metrics-ns",status="False"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(!text.contains(r#"externalsecret_sync_calls_error{name="metrics-good""#));
    }

    #[test]
    fn yaml_is_deterministic_and_parses_back() {
        let s = DesiredSecret {
            namespace: "team".into(),
            name: "out".into(),
            type_: "Opaque".into(),
            labels: [
                (
                    "reconcile.external-secrets.io/managed".to_string(),
                    "true".to_string(),
                ),
                ("n".to_string(), "0123".to_string()),
            ]
            .into(),
            annotations: [("note".to_string(), "a: b # c\n\"q\"".to_string())].into(),
            data: [
                ("bin".to_string(), vec![0, 255]),
                ("k".to_string(), b"v".to_vec()),
            ]
            .into(),
            immutable: true,
            owner: Some(sync::OwnerReference {
                name: "es".into(),
                uid: Some("u-1".into()),
            }),
            provider_data_empty: false,
        };
        let text = secret_yaml(&s);
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            v["metadata"]["labels"]["reconcile.external-secrets.io/managed"],
            "true"
        );
        assert_eq!(v["metadata"]["labels"]["n"], "0123");
        assert_eq!(v["metadata"]["annotations"]["note"], "a: b # c\n\"q\"");
        assert_eq!(v["data"]["bin"], "AP8=");
        assert_eq!(v["data"]["k"], "dg==");
        assert_eq!(v["immutable"], true);
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(secret_yaml(&s), text);
        for word in ["true", "No", "null", "1", "-x", ".inf", "", "a b", "~"] {
            let parsed: serde_json::Value =
                serde_saphyr::from_str(&format!("k: {}\n", scalar(word))).unwrap();
            assert_eq!(parsed["k"], word, "{word}");
        }
    }

    /// A state file planted as a symlink (to /dev/zero, or to another state) is refused,
    /// never followed (review: /dev/zero passed the size check, 0 bytes, and was read
    /// without end).
    #[test]
    fn a_symlinked_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let r = OutputReconciler::new(OutputOptions {
            manifests,
            output: dir.path().join("out"),
            controller_class: String::new(),
            provider_settings: ProviderSettings::default(),
        })
        .unwrap();
        let other = dir.path().join("other.json");
        std::fs::write(&other, br#"{"version":1,"externalSecrets":{}}"#).unwrap();
        std::os::unix::fs::symlink(&other, r.state_path()).unwrap();
        let e = r.load_state().unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(r.state_path()).unwrap();
        std::os::unix::fs::symlink("/dev/zero", r.state_path()).unwrap();
        let e = r.load_state().unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn status_transition_times_move_only_on_change() {
        let mut st = Status::default();
        st.set_ready(false, REASON_SYNCED_ERROR, "a".into(), 10);
        st.set_ready(false, REASON_SYNCED_ERROR, "b".into(), 20);
        assert_eq!(st.ready.as_ref().unwrap().last_transition_time, 10);
        st.set_ready(true, REASON_SYNCED, "ok".into(), 30);
        assert_eq!(st.ready.as_ref().unwrap().last_transition_time, 30);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
