//! The audit log: one JSON line per authorization decision (events with target
//! `esi::decision`) and per issued or revoked credential (target `esi::audit`), to a file or
//! stdout, with the request id of the enclosing `request` span.
//!
//! It is a `tracing` layer, so emitters only log structured fields. It never writes a value:
//! emitters log names and ids only, and as a second line of defence fields whose names denote
//! secret material (`value`, `token`, `password`, …) are dropped here whatever they hold.
//!
//! **No unaudited answers.** Lines are written in batches, one `write(2)` for the lines
//! queued while the previous batch was written (group commit, [`writer`]). An emitter that
//! must know runs its work inside [`collect`] and awaits the [`Receipts`] before answering:
//! the API refuses with 503 when a decision's line was not written (as Vault refuses
//! requests no audit device can record); a credential whose "issued" line cannot be written
//! is revoked again and not handed out. No thread waits on another's write: while one
//! writes, the others queue their lines and serve other requests. Failures count in
//! `esi_audit_log_events_total{outcome="write_error"}`, `esi_audit_log_ok` drops to 0, and
//! one error line per 10 s goes to stderr. The first line written again restores service:
//! nothing needs a restart.
//!
//! **Rotation.** [`AuditReopener::reopen`] (the server calls it on SIGHUP) opens the path again,
//! so `logrotate` can move the file and signal the server (`docs/security.md` has the recipe).

mod writer;

pub use writer::{AUDIT_QUEUE_BYTES, Receipts, Ticket, collect};

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::metrics::METRICS;
use writer::{Committer, Sink};

/// Target of authorization decisions (emitted by `authz`).
pub const DECISION_TARGET: &str = "esi::decision";
/// Target of credential events (issued, revoked; emitted by the generator code).
pub const AUDIT_TARGET: &str = "esi::audit";
/// Name of the per-request span whose `request_id` audit lines carry.
const REQUEST_SPAN: &str = "request";

/// Field names never written, whatever an emitter puts in them.
const DENIED_FIELDS: &[&str] = &[
    "value",
    "values",
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "data",
    "ca.crt",
    "ca_crt",
    "authorization",
    "credential",
    "credentials",
    "key_material",
    "private_key",
];

/// Audit log failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit file cannot be opened.
    #[error("cannot open audit log {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether a metadata item is something the audit layer consumes: an audit event, or the
/// request span (for its id).
pub fn is_audit_relevant(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        return meta.name() == REQUEST_SPAN;
    }
    if meta.fields().field(IN_AUDIT_LOG).is_some() {
        // The operational log's copy of a line [`record_decision`] wrote already.
        return false;
    }
    meta.target() == DECISION_TARGET || meta.target() == AUDIT_TARGET
}

/// Field that marks an event as the operational log's copy of a decision line
/// [`record_decision`] wrote to the audit log itself: the audit layer skips such events
/// (by their callsite's field names, at no cost per event), every other `esi::decision` or
/// `esi::audit` event is written as before.
pub const IN_AUDIT_LOG: &str = "in_audit_log";

/// One authorization decision, as its audit line records it ([`record_decision`]).
/// Members in this order: `federation`, `principal`, `principal_type`, `principal_id`,
/// `action`, `resource`, `source_address` (when known), `decision` (`allow`/`deny`),
/// `policies` (array of policy ids).
#[derive(Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// Federation that verified the caller.
    pub federation: &'a str,
    /// The caller's subject.
    pub principal: &'a str,
    /// Cedar entity type of the caller (`ServiceAccount`, `OidcSubject`, …).
    pub principal_type: &'a str,
    /// The caller's Cedar entity id, formatted only when written.
    pub principal_id: &'a dyn fmt::Display,
    /// The action (`get`, `find`, …).
    pub action: &'a str,
    /// The canonical resource, formatted only when written.
    pub resource: &'a dyn fmt::Display,
    /// The TCP peer, when the request came from the network.
    pub source_address: Option<std::net::IpAddr>,
    /// The decision.
    pub allowed: bool,
    /// Ids of the determining policies.
    pub policies: &'a [String],
}

/// Writes the audit line of one decision straight to the audit layer of the current
/// `tracing` dispatcher, with the request id, method and route of the enclosing `request`
/// span: the same line an `esi::decision` event with these fields gives, without
/// formatting and visiting the fields through `tracing` (a third of the line's cost per
/// request, issue 15). A failed write is reported like every audit line's
/// (its ticket goes to the running [`collect`]). `false` when there is no audit layer (no audit log): the
/// caller then logs the decision to the operational log.
pub fn record_decision(record: &DecisionRecord<'_>) -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        let Some(layer) = dispatch.downcast_ref::<AuditLayer>() else {
            return false;
        };
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>();
        let ms = now_ms();
        with_scratch(|scratch| {
            let out = &mut scratch.line;
            out.clear();
            let _ = write!(
                out,
                "{{\"ts_ms\":{ms},\"kind\":\"decision\",\"level\":\"INFO\""
            );
            if let Some(registry) = registry {
                push_request_info(out, registry);
            }
            let text = &mut scratch.text;
            out.extend_from_slice(b",\"federation\":");
            json_str(out, record.federation);
            out.extend_from_slice(b",\"principal\":");
            json_str(out, record.principal);
            out.extend_from_slice(b",\"principal_type\":");
            json_str(out, record.principal_type);
            out.extend_from_slice(b",\"principal_id\":");
            json_display(out, text, record.principal_id);
            out.extend_from_slice(b",\"action\":");
            json_str(out, record.action);
            out.extend_from_slice(b",\"resource\":");
            json_display(out, text, record.resource);
            if let Some(address) = record.source_address {
                out.extend_from_slice(b",\"source_address\":");
                json_display(out, text, &address);
            }
            out.extend_from_slice(if record.allowed {
                b",\"decision\":\"allow\",\"policies\":["
            } else {
                b",\"decision\":\"deny\",\"policies\":["
            });
            for (i, id) in record.policies.iter().enumerate() {
                if i > 0 {
                    // As the event's `?policies` (Rust's list format) gave it.
                    out.extend_from_slice(b", ");
                }
                json_str(out, id);
            }
            out.extend_from_slice(b"]}\n");
            layer.write_line(out);
        });
        true
    })
}

/// Milliseconds since the Unix epoch (a line's `ts_ms`); 0 for a clock before 1970.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends the members of the innermost `request` span around the current one, if any.
fn push_request_info(out: &mut Vec<u8>, registry: &tracing_subscriber::Registry) {
    let current = Subscriber::current_span(registry);
    let Some(span) = current.id().and_then(|id| registry.span(id)) else {
        return;
    };
    for span in span.scope() {
        if let Some(info) = span.extensions().get::<RequestInfo>() {
            out.extend_from_slice(&info.0);
            return;
        }
    }
}

/// Appends `value`'s `Display` text as a JSON string, formatted in `text`.
fn json_display(out: &mut Vec<u8>, text: &mut String, value: &dyn fmt::Display) {
    text.clear();
    if fmt::Write::write_fmt(text, format_args!("{value}")).is_err() {
        text.clear();
        text.push_str("<unformattable>");
    }
    json_str(out, text);
}

/// The layer. Add it with a filter such as `filter_fn(is_audit_relevant)` so the rest of the
/// logging configuration (e.g. `RUST_LOG=warn`) never silences the audit trail.
pub struct AuditLayer {
    committer: Arc<Committer>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

/// Opens the audit file of an [`AuditLayer`] again (log rotation) and waits for its queue.
#[derive(Clone)]
pub struct AuditReopener(Arc<Committer>);

impl fmt::Debug for AuditReopener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditReopener").finish_non_exhaustive()
    }
}

impl AuditReopener {
    /// Opens the file at its path again (created 0600 if it was moved away) and writes the
    /// next lines there. `Ok(false)` when the sink is not a file (stdout).
    ///
    /// # Errors
    /// [`AuditError::Open`]: the old file stays in use; the next SIGHUP tries again.
    pub fn reopen(&self) -> Result<bool, AuditError> {
        let mut sink = self.0.sink.lock().unwrap_or_else(|p| p.into_inner());
        match sink.reopen() {
            Ok(reopened) => {
                if reopened {
                    METRICS.audit_events.with_label_values(&["reopened"]).inc();
                }
                Ok(reopened)
            }
            Err(e) => {
                METRICS
                    .audit_events
                    .with_label_values(&["reopen_error"])
                    .inc();
                Err(e)
            }
        }
    }

    /// Waits until the lines queued so far are written (or failed), at most `limit`;
    /// `false` when some were still queued then. The server calls it before it exits.
    pub fn flush(&self, limit: Duration) -> bool {
        self.0.flush(limit)
    }
}

impl AuditLayer {
    fn with_sink(sink: Sink) -> Self {
        AuditLayer {
            committer: Arc::new(Committer::new(sink)),
        }
    }

    /// Writes to `writer` (lines in batches, flushed after each).
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self::with_sink(Sink::Writer(writer))
    }

    /// `-` is stdout; anything else a file, appended to and created with mode 0600.
    ///
    /// # Errors
    /// [`AuditError::Open`] when the file cannot be opened.
    pub fn to_path(path: &Path) -> Result<Self, AuditError> {
        if path.as_os_str() == "-" {
            return Ok(Self::new(Box::new(std::io::stdout())));
        }
        let file = writer::open_append(path)?;
        Ok(Self::with_sink(Sink::File {
            path: path.to_path_buf(),
            file,
        }))
    }

    /// A handle that reopens this layer's file.
    pub fn reopener(&self) -> AuditReopener {
        AuditReopener(self.committer.clone())
    }

    /// Queues one whole line; its ticket goes to the running [`collect`], if any.
    fn write_line(&self, text: &[u8]) {
        self.committer.push(text);
    }
}

/// The fields of a `request` span an audit line repeats, as JSON members
/// (`,"request_id":"…","method":"…","route":"…"`), in the order the span declared them.
struct RequestInfo(Vec<u8>);

/// Names of the members every line starts with (or takes from its request span): an event
/// field of one of these names is not written, so no event can pose as another kind of line
/// or another request.
const LINE_MEMBERS: &[&str] = &["ts_ms", "kind", "level", "request_id", "method", "route"];

/// Writes fields as JSON object members (`,"name":value`) straight into a line, dropping
/// denied names, the line's own members and any name written already (first wins).
struct JsonMembers<'a> {
    out: &'a mut Vec<u8>,
    /// Names written so far by this visitor.
    seen: &'a mut Vec<&'static str>,
    /// Where `Debug`/`Display` values are formatted before they are escaped.
    text: &'a mut String,
    /// Only these names are kept (`None`: all but the denied and the line's own).
    only: Option<&'static [&'static str]>,
}

/// Buffers a thread reuses from line to line: once warm, a line allocates nothing.
#[derive(Default)]
struct Scratch {
    line: Vec<u8>,
    seen: Vec<&'static str>,
    text: String,
}

impl Scratch {
    const fn new() -> Self {
        Scratch {
            line: Vec::new(),
            seen: Vec::new(),
            text: String::new(),
        }
    }

    /// A buffer far above the usual size does not stay allocated to the thread.
    fn trim(&mut self) {
        if self.line.capacity() > 64 * 1024 {
            self.line = Vec::new();
        }
        if self.text.capacity() > 64 * 1024 {
            self.text = String::new();
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's [`Scratch`], or with fresh buffers when it cannot be had (a
/// line being built already on this thread, or the thread being torn down).
fn with_scratch(mut f: impl FnMut(&mut Scratch)) {
    let done = SCRATCH
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                f(&mut scratch);
                scratch.trim();
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !done {
        f(&mut Scratch::default());
    }
}

impl<'a> JsonMembers<'a> {
    fn new(
        out: &'a mut Vec<u8>,
        seen: &'a mut Vec<&'static str>,
        text: &'a mut String,
        only: Option<&'static [&'static str]>,
    ) -> Self {
        seen.clear();
        JsonMembers {
            out,
            seen,
            text,
            only,
        }
    }

    /// Starts the member `name` (`,"name":`), or says it must be skipped.
    fn member(&mut self, field: &Field) -> bool {
        let name = field.name();
        let wanted = match self.only {
            Some(only) => only.contains(&name),
            None => !DENIED_FIELDS.contains(&name) && !LINE_MEMBERS.contains(&name),
        };
        if !wanted || self.seen.contains(&name) {
            return false;
        }
        self.seen.push(name);
        self.out.push(b',');
        json_str(self.out, name);
        self.out.push(b':');
        true
    }
}

/// Appends `text` as a JSON string.
fn json_str(out: &mut Vec<u8>, text: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl Visit for JsonMembers<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.member(field) {
            json_str(self.out, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.member(field) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.member(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.member(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.member(field) {
            // JSON has no NaN or infinity: as serde_json does, those become null.
            let _ = serde_json::to_writer(&mut *self.out, &value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.member(field) {
            return;
        }
        self.text.clear();
        if fmt::Write::write_fmt(self.text, format_args!("{value:?}")).is_err() {
            self.text.clear();
            self.text.push_str("<unformattable>");
        }
        // `?vec_of_strings` (e.g. policy ids) prints as a JSON array already: keep its
        // structure when it is one, whole and on one line; anything else is a string.
        let array = self.text.starts_with('[')
            && !self.text.contains(['\n', '\r'])
            && serde_json::from_str::<serde::de::IgnoredAny>(self.text).is_ok();
        if array {
            self.out.extend_from_slice(self.text.as_bytes());
        } else {
            json_str(self.out, self.text);
        }
    }
}

impl<S> Layer<S> for AuditLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != REQUEST_SPAN {
            return;
        }
        let mut members = Vec::with_capacity(96);
        with_scratch(|scratch| {
            members.clear();
            attrs.record(&mut JsonMembers::new(
                &mut members,
                &mut scratch.seen,
                &mut scratch.text,
                Some(&["request_id", "method", "route"]),
            ));
        });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(RequestInfo(members));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let kind = match meta.target() {
            DECISION_TARGET => "decision",
            AUDIT_TARGET => "credential",
            _ => return,
        };
        let ms = now_ms();
        with_scratch(|scratch| {
            let out = &mut scratch.line;
            out.clear();
            let _ = write!(out, "{{\"ts_ms\":{ms},\"kind\":\"{kind}\",\"level\":");
            json_str(out, meta.level().as_str());
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope {
                    if let Some(info) = span.extensions().get::<RequestInfo>() {
                        out.extend_from_slice(&info.0);
                        break;
                    }
                }
            }
            event.record(&mut JsonMembers::new(
                out,
                &mut scratch.seen,
                &mut scratch.text,
                None,
            ));
            out.extend_from_slice(b"}\n");
            self.write_line(out);
        });
    }
}

/// Replaces the panic message hook: a panic payload may hold whatever the failing code was
/// handling (a value, a token), so only the location is logged.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
        tracing::error!(file, line, "panic (message withheld)");
        eprintln!("esi-server: panic at {file}:{line} (message withheld)");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buf) -> Vec<serde_json::Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn decisions_and_credentials_become_json_lines_with_the_request_id() {
        let buf = Buf::default();
        let layer =
            AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("request", request_id = "r-1", method = "POST", route = "/x");
            let _g = span.enter();
            tracing::info!(target: "esi::decision", federation = "f", principal = "p",
                decision = "allow", policies = ?vec!["authz/a".to_string()]);
            tracing::info!(target: "esi::audit", event = "issued", federation = "f",
                subject = "s", generator = "Password/pw", value = "hunter2", token = "eyJ");
            // Not audit events.
            tracing::info!(secret = "x", "ordinary log line");
            tracing::info!(target: "esi::other", "other");
        });
        let got = lines(&buf);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["kind"], "decision");
        assert_eq!(got[0]["request_id"], "r-1");
        assert_eq!(got[0]["route"], "/x");
        assert_eq!(got[0]["policies"], serde_json::json!(["authz/a"]));
        assert_eq!(got[1]["kind"], "credential");
        assert_eq!(got[1]["event"], "issued");
        assert_eq!(got[1]["generator"], "Password/pw");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("eyJ"), "{text}");
    }

    /// A record with hostile text in every string member.
    fn hostile_record<'a>(
        policies: &'a [String],
        resource: &'a dyn fmt::Display,
    ) -> DecisionRecord<'a> {
        DecisionRecord {
            federation: "f\"},{\"kind\":\"x",
            principal: "system:serviceaccount:ns:sa\n{",
            principal_type: "ServiceAccount",
            principal_id: &"f/ns/sa",
            action: "get",
            resource,
            source_address: Some("10.1.2.3".parse().unwrap()),
            allowed: true,
            policies,
        }
    }

    #[test]
    fn a_recorded_decision_is_the_line_its_event_would_give() {
        let policies = vec!["authorization/a/stores".to_string(), "p\"q".to_string()];
        let resource = "store/s/key/k\"\n";
        let (direct, via_event) = (Buf::default(), Buf::default());
        for (buf, direct_path) in [(&direct, true), (&via_event, false)] {
            let layer =
                AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
                let span = tracing::info_span!(
                    "request",
                    request_id = "r-9",
                    method = "POST",
                    route = "/secretstore/{store}/secrets/{key}"
                );
                let _g = span.enter();
                let r = hostile_record(&policies, &resource);
                if direct_path {
                    assert!(record_decision(&r));
                } else {
                    tracing::info!(target: "esi::decision", federation = r.federation,
                        principal = r.principal, principal_type = r.principal_type,
                        principal_id = %r.principal_id, action = r.action,
                        resource = %r.resource,
                        source_address = r.source_address.map(tracing::field::display),
                        decision = "allow", policies = ?r.policies);
                }
            });
        }
        let (a, b) = (lines(&direct), lines(&via_event));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["request_id"], "r-9");
        assert_eq!(a[0]["federation"], "f\"},{\"kind\":\"x");
        assert_eq!(a[0]["source_address"], "10.1.2.3");
        assert_eq!(
            a[0]["policies"],
            serde_json::json!(["authorization/a/stores", "p\"q"])
        );
        // Byte for byte the event's line (member order and escaping), but for the time.
        let text = |b: &Buf| {
            let t = String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
            t.split_once(",\"kind\"").unwrap().1.to_string()
        };
        assert_eq!(text(&direct), text(&via_event));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn the_operational_copy_of_a_recorded_decision_is_not_written_twice() {
        let buf = Buf::default();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        let layer =
            AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
        let oplog = filter_fn(move |m| {
            if m.is_event() && m.target() == DECISION_TARGET {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            true
        });
        let subscriber = tracing_subscriber::registry().with(layer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(oplog),
        );
        tracing::subscriber::with_default(subscriber, || {
            let policies = vec!["p".to_string()];
            let r = hostile_record(&policies, &"store/s/key/k");
            assert!(record_decision(&r));
            tracing::info!(target: "esi::decision", decision = "allow", in_audit_log = true);
        });
        assert_eq!(
            lines(&buf).len(),
            1,
            "the marked copy was written to the audit log"
        );
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the op log saw no copy"
        );
    }

    #[test]
    fn without_an_audit_layer_nothing_is_recorded_and_failures_are_reported() {
        let policies = vec!["p".to_string()];
        let r = hostile_record(&policies, &"store/s/key/k");
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            assert!(!record_decision(&r));
        });
        let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let buf = Buf::default();
        let layer = AuditLayer::new(Box::new(Flaky(full.clone(), buf.clone())))
            .with_filter(filter_fn(is_audit_relevant));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let (recorded, receipts) = collect(|| record_decision(&r));
            assert!(recorded);
            assert!(!receipts.wait(), "a failed write was not reported");
            full.store(false, std::sync::atomic::Ordering::SeqCst);
            let (recorded, receipts) = collect(|| record_decision(&r));
            assert!(recorded);
            assert!(receipts.wait());
        });
        assert_eq!(lines(&buf).len(), 1);
    }

    #[test]
    fn an_event_cannot_pose_as_another_kind_or_request_and_text_is_escaped() {
        let buf = Buf::default();
        let layer =
            AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!("request", request_id = "r-2", route = "/y");
            let _g = span.enter();
            tracing::info!(target: "esi::decision", kind = "credential", request_id = "forged",
                level = "TRACE", resource = "k\"},\n{\"kind\":\"x", decision = "deny",
                n = 7u64, ok = true, ratio = f64::NAN);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let got = lines(&buf);
        assert_eq!(got[0]["kind"], "decision");
        assert_eq!(got[0]["request_id"], "r-2");
        assert_eq!(got[0]["level"], "INFO");
        assert_eq!(got[0]["resource"], "k\"},\n{\"kind\":\"x");
        assert_eq!(got[0]["n"], 7);
        assert_eq!(got[0]["ok"], true);
        assert!(got[0]["ratio"].is_null());
    }

    #[test]
    fn only_a_whole_json_array_is_kept_as_an_array() {
        let buf = Buf::default();
        let layer =
            AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            for _ in 0..2 {
                tracing::info!(target: "esi::decision",
                    policies = ?vec!["authorization/a/stores", "policy\"q"],
                    forged = %"[1],\"decision\":\"allow\"",
                    escaped = ?vec!["a\u{1b}b"],
                    multi = %"[1,\n2]",
                    decision = "deny");
            }
        });
        let got = lines(&buf);
        assert_eq!(got.len(), 2);
        for line in got {
            assert_eq!(
                line["policies"],
                serde_json::json!(["authorization/a/stores", "policy\"q"])
            );
            assert_eq!(line["forged"], "[1],\"decision\":\"allow\"");
            assert_eq!(line["decision"], "deny");
            // Rust's `\u{1b}` is not JSON: the whole text is a string.
            assert_eq!(line["escaped"], "[\"a\\u{1b}b\"]");
            assert_eq!(line["multi"], "[1,\n2]");
        }
    }

    #[test]
    fn events_outside_a_request_have_no_request_id() {
        let buf = Buf::default();
        let layer =
            AuditLayer::new(Box::new(buf.clone())).with_filter(filter_fn(is_audit_relevant));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::warn!(target: "esi::decision", error = "bad", "request denied before evaluation");
        });
        let got = lines(&buf);
        assert_eq!(got.len(), 1);
        assert!(got[0].get("request_id").is_none());
        assert_eq!(got[0]["level"], "WARN");
        assert_eq!(got[0]["message"], "request denied before evaluation");
    }

    #[test]
    fn file_is_private_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for _ in 0..2 {
            let layer = AuditLayer::to_path(&path).unwrap();
            layer.write_line(b"{\"a\":1}\n");
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":1}\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(AuditLayer::to_path(&dir.path().join("no/such/dir")).is_err());
    }

    #[test]
    fn reopen_follows_the_path_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let layer = AuditLayer::to_path(&path).unwrap();
        layer.write_line(b"{\"n\":1}\n");
        assert!(layer.reopener().flush(Duration::from_secs(10)));
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        assert!(layer.reopener().reopen().unwrap());
        layer.write_line(b"{\"n\":2}\n");
        assert!(layer.reopener().flush(Duration::from_secs(10)));
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
        // stdout has nothing to reopen.
        assert!(
            !AuditLayer::new(Box::new(Buf::default()))
                .reopener()
                .reopen()
                .unwrap()
        );
    }

    /// Fails every write while `full` is set.
    struct Flaky(Arc<std::sync::atomic::AtomicBool>, Buf);
    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("no space"));
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_reported_to_its_emitter_and_recovery_is_automatic() {
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let buf = Buf::default();
        let layer = AuditLayer::new(Box::new(Flaky(full.clone(), buf.clone())))
            .with_filter(filter_fn(is_audit_relevant));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let audited =
                || collect(|| tracing::info!(target: "esi::decision", decision = "allow")).1;
            assert!(audited().wait());
            full.store(true, std::sync::atomic::Ordering::SeqCst);
            let failed = audited();
            assert_eq!(failed.len(), 1);
            assert!(!failed.wait());
            // Ordinary log lines are not audit lines: nothing to wait for.
            let ((), none) = collect(|| tracing::info!("not audit"));
            assert!(none.is_empty());
            full.store(false, std::sync::atomic::Ordering::SeqCst);
            assert!(audited().wait());
        });
        assert_eq!(lines(&buf).len(), 2);
    }
}
