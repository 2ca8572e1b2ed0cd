//! Text-log hygiene: every field value is escaped so that caller-chosen text (remote keys,
//! owner names, subjects, store names …) cannot forge log lines or reach a terminal raw.
//!
//! `tracing-subscriber`'s default text format writes `%` (Display) fields and the message
//! verbatim, so a key holding `%0A` (newline) could add a whole forged
//! `esi::decision … decision="allow"` line, and `ESC [` sequences would drive the
//! operator's terminal (CWE-117, log injection; CWE-150, escape sequences). The JSON
//! format already escapes (it is JSON).
//!
//! [`EscapedFields`] is a [`FormatFields`] for the text format. For each field:
//!
//! * control characters (C0, DEL, C1), line and paragraph separators (U+2028/9) and
//!   bidirectional overrides/isolates (U+202A–E, U+2066–9, "Trojan Source",
//!   CVE-2021-42574) become `\n`, `\r`, `\t`, `\u{..}`;
//! * `\` and `"` are escaped;
//! * a value that is empty or holds whitespace, `=`, `"` or `\` is wrapped in `"…"`, so
//!   a value cannot pose as another `name=value` field.
//!
//! The message is escaped the same way but not quoted.
//!
//! The JSON format is [`JsonLines`] (same shape as `tracing-subscriber`'s, at a fraction of
//! its cost; see [`json`]).

pub mod json;

pub use json::{JsonLines, JsonSpanFields};

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Most bytes of operational log lines waiting for the writer thread; a line that would
/// go beyond is dropped (and counted).
pub const LOG_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Longest operational log line written (bytes, newline included). A longer one (only
/// caller-chosen text can make one: our own fields are bounded) is replaced by a short
/// notice.
pub const LOG_LINE_MAX_BYTES: usize = 4 * 1024;

/// After writing, how long the writer thread lets the next lines gather before it writes
/// again: a quiet server's line is written at once, a busy one's in batches of this much.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(2);

/// Capacity the writer thread keeps for its batch between writes.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// Lines dropped (queue full) or replaced (too long).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What the request threads and the writer thread share.
struct Queue {
    lines: Mutex<Queued>,
    /// Wakes the writer thread: a first line after a quiet spell, a full batch, the end.
    wake: Condvar,
}

struct Queued {
    bytes: Vec<u8>,
    closing: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // A panic while holding the lock cannot leave the bytes half-written (extend is
        // all or nothing for our purposes): keep logging.
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one whole line; false when it was dropped.
    fn push(&self, line: &[u8]) -> bool {
        let mut q = self.lock();
        if q.bytes.len() + line.len() > LOG_QUEUE_BYTES {
            return false;
        }
        let first = q.bytes.is_empty();
        q.bytes.extend_from_slice(line);
        drop(q);
        // Only the first line of a batch wakes the writer; it takes the rest with it.
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// The writer thread: sleeps while nothing is queued; writes what is queued with one
    /// `write_all` as soon as a line comes, then lets the next lines gather for
    /// [`LOG_FLUSH_INTERVAL`] before it looks again (at most one wake-up and one write per
    /// interval, however many lines). Ends after writing what was queued when the guard is
    /// dropped.
    fn write_out(&self, mut sink: impl std::io::Write) {
        let mut batch = Vec::with_capacity(LOG_BATCH_BYTES);
        loop {
            let closing = {
                let mut q = self.lock();
                while q.bytes.is_empty() && !q.closing {
                    q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                std::mem::swap(&mut q.bytes, &mut batch);
                q.closing
            };
            // Nowhere to report a failed write to but stderr itself: the lines are lost.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            if batch.capacity() > 4 * LOG_BATCH_BYTES {
                batch = Vec::with_capacity(LOG_BATCH_BYTES);
            }
            if closing {
                // Lines queued while the last batch was written.
                let rest = std::mem::take(&mut self.lock().bytes);
                let _ = sink.write_all(&rest).and_then(|()| sink.flush());
                return;
            }
            std::thread::sleep(LOG_FLUSH_INTERVAL);
        }
    }
}

/// The operational log's writer ([`non_blocking_stderr`]): queues each line for the writer
/// thread, replacing one longer than [`LOG_LINE_MAX_BYTES`] by a notice, and says on stderr
/// (at most once a minute) when lines were dropped.
#[derive(Clone)]
pub struct LogWriter {
    queue: Arc<Queue>,
    json: bool,
    reported: Arc<AtomicU64>,
    complaints: Arc<Throttled>,
}

impl LogWriter {
    fn note_drops(&self) {
        let dropped = dropped_lines();
        if dropped > self.reported.load(Ordering::Relaxed) && self.complaints.tick().is_some() {
            let before = self.reported.swap(dropped, Ordering::Relaxed);
            // Not through the queue, which is what is full.
            eprintln!(
                "esi-server: {} operational log lines dropped (queue full or line over {LOG_LINE_MAX_BYTES} bytes); see esi_log_lines_dropped_total",
                dropped.saturating_sub(before)
            );
        }
    }

    fn queue(&self, line: &[u8]) {
        if !self.queue.push(line) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::io::Write for LogWriter {
    /// Takes one whole line (the fmt layer writes each line with one `write_all`).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > LOG_LINE_MAX_BYTES {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            let notice = if self.json {
                format!(
                    "{{\"level\":\"WARN\",\"target\":\"esi::logging\",\"message\":\"a log line of {} bytes was not written (longer than {LOG_LINE_MAX_BYTES})\"}}\n",
                    buf.len()
                )
            } else {
                format!(
                    " WARN esi::logging: a log line of {} bytes was not written (longer than {LOG_LINE_MAX_BYTES})\n",
                    buf.len()
                )
            };
            self.queue(notice.as_bytes());
        } else {
            self.queue(buf);
        }
        self.note_drops();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Ends the operational log's writer thread when dropped, after it wrote what was queued.
pub struct LogGuard {
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.lock().closing = true;
        self.queue.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A writer for the operational log (stderr) that does not write on the thread that logs,
/// nor wake another thread per line: lines are queued (at most [`LOG_QUEUE_BYTES`], each at
/// most [`LOG_LINE_MAX_BYTES`]) and a thread of their own writes them: at once when the
/// server is quiet, in batches at most every [`LOG_FLUSH_INTERVAL`] when it is busy. A request thread never
/// waits on stderr (a slow or full pipe, a paused log collector) and pays one lock and a
/// copy per line; when the queue is full, lines are dropped, counted
/// (`esi_log_lines_dropped_total`) and reported on stderr at most once a minute, never
/// blocking requests. (`tracing-appender`'s writer, used before, hands each line through a
/// channel and wakes its thread for most of them: about a tenth of the server's CPU at the
/// default log level, issue 15.) The audit log does not go through it (its lines are written
/// before the answer, see [`crate::audit`]). `json` says which format the notices of
/// replaced lines take. Lines still queued when the process is killed (SIGKILL) are lost:
/// at most [`LOG_FLUSH_INTERVAL`]'s worth.
///
/// Keep the guard until the process ends: dropping it writes what is queued.
///
/// # Errors
/// When the writer thread cannot be started.
pub fn non_blocking_stderr(json: bool) -> std::io::Result<(LogWriter, LogGuard)> {
    let queue = Arc::new(Queue {
        lines: Mutex::new(Queued {
            bytes: Vec::with_capacity(LOG_BATCH_BYTES),
            closing: false,
        }),
        wake: Condvar::new(),
    });
    let thread = {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("esi-log-writer".into())
            .spawn(move || queue.write_out(std::io::stderr()))?
    };
    let writer = LogWriter {
        queue: queue.clone(),
        json,
        reported: Arc::new(AtomicU64::new(0)),
        complaints: Arc::new(Throttled::new(Duration::from_secs(60))),
    };
    Ok((
        writer,
        LogGuard {
            queue,
            thread: Some(thread),
        },
    ))
}

/// Operational log lines dropped (queue full) or replaced (too long) so far by
/// [`non_blocking_stderr`]'s writer (0 when it is not in use).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Field formatter for the text log that escapes every value (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, text: &str, plain: bool) {
        if self.result.is_err() {
            return;
        }
        let mut out = String::with_capacity(text.len() + field.name().len() + 4);
        if !self.first {
            out.push(' ');
        }
        self.first = false;
        if field.name() == "message" {
            escape_into(&mut out, text);
        } else {
            // `r#type` and the like: tracing keeps the raw-identifier prefix.
            out.push_str(field.name().trim_start_matches("r#"));
            out.push('=');
            if plain {
                out.push_str(text);
            } else {
                push_value(&mut out, text);
            }
        }
        self.result = self.writer.write_str(&out);
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        if write!(text, "{value:?}").is_err() {
            text = "<unformattable>".into();
        }
        self.write(field, &text, false);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, &value.to_string(), true);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, &value.to_string(), true);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, if value { "true" } else { "false" }, true);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, &value.to_string(), true);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string(), false);
    }
}

/// Whether `c` must not appear raw in a log line.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Appends `text` with control characters, `\` and `"` escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Appends a field value: escaped, and quoted unless it is one plain token.
fn push_value(out: &mut String, text: &str) {
    let needs_quotes = text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '=' | '"' | '\\') || is_unsafe(c));
    if needs_quotes {
        out.push('"');
        escape_into(out, text);
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// Escapes one value for a text log line (used by tests and by code that builds lines
/// by hand).
pub fn escape_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_value(&mut out, text);
    out
}

/// Whether log lines on stderr get ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to a non-empty value (<https://no-color.org>). Logs written to a file or
/// a pipe stay plain text.
pub fn stderr_colors() -> bool {
    colors(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    )
}

fn colors(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A warning or error logged at most once per interval, with the number of occurrences it
/// stands for: repeated failures (load shedding, an unwritable audit log) never flood the log.
pub struct Throttled {
    every_ms: u64,
    epoch: Instant,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttled {
    /// At most one occurrence logged per `every`.
    pub fn new(every: Duration) -> Self {
        Throttled {
            every_ms: every.as_millis() as u64,
            epoch: Instant::now(),
            // So that the first occurrence is logged.
            last_ms: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged (`n` occurrences were not since the
    /// last one that was), `None` otherwise.
    pub fn tick(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_line_over_the_limit_is_replaced_and_counted() {
        use std::io::Write as _;
        let (mut writer, _guard) = super::non_blocking_stderr(true).unwrap();
        let before = super::dropped_lines();
        let line = vec![b'x'; super::LOG_LINE_MAX_BYTES + 1];
        assert_eq!(writer.write(&line).unwrap(), line.len());
        assert_eq!(super::dropped_lines(), before + 1);
        // A line within the limit goes through untouched and is not counted.
        writer.write_all(b"{\"message\":\"ok\"}\n").unwrap();
        assert_eq!(super::dropped_lines(), before + 1);
    }

    use super::*;

    fn queue() -> Arc<Queue> {
        Arc::new(Queue {
            lines: Mutex::new(Queued {
                bytes: Vec::new(),
                closing: false,
            }),
            wake: Condvar::new(),
        })
    }

    /// Records what each flush carried.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<(Vec<u8>, Vec<usize>)>>);

    impl std::io::Write for Batches {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let mut g = self.0.lock().unwrap();
            let n = g.0.len();
            g.1.push(n);
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_in_few_batches_and_all_at_the_end() {
        let q = queue();
        let sink = Batches::default();
        let thread = {
            let (q, sink) = (q.clone(), sink.clone());
            std::thread::spawn(move || q.write_out(sink))
        };
        let mut expected = Vec::new();
        for i in 0..5_000 {
            let line = format!("line {i}\n");
            assert!(q.push(line.as_bytes()));
            expected.extend_from_slice(line.as_bytes());
        }
        q.lock().closing = true;
        q.wake.notify_one();
        thread.join().unwrap();
        let (written, flushes) = sink.0.lock().unwrap().clone();
        assert_eq!(written, expected);
        // 5,000 lines (≈ 48 KiB) in a few batches, not one write per line.
        assert!(flushes.len() <= 4, "{flushes:?}");
    }

    #[test]
    fn a_line_waits_at_most_the_flush_interval() {
        let q = queue();
        let sink = Batches::default();
        {
            let (q, sink) = (q.clone(), sink.clone());
            std::thread::spawn(move || q.write_out(sink));
        }
        let start = Instant::now();
        assert!(q.push(b"one\n"));
        while sink.0.lock().unwrap().1.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(5), "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.0.lock().unwrap().0, b"one\n");
        q.lock().closing = true;
        q.wake.notify_one();
    }

    #[test]
    fn a_full_queue_drops_lines_instead_of_growing() {
        let q = queue();
        let line = vec![b'x'; LOG_LINE_MAX_BYTES];
        let fits = LOG_QUEUE_BYTES / line.len();
        for _ in 0..fits {
            assert!(q.push(&line));
        }
        assert!(!q.push(&line));
        assert!(q.lock().bytes.len() <= LOG_QUEUE_BYTES);
    }

    #[test]
    fn colors_only_on_a_terminal_without_no_color() {
        assert!(colors(true, None));
        assert!(colors(true, Some("".into())));
        assert!(!colors(true, Some("1".into())));
        assert!(!colors(false, None));
    }

    #[test]
    fn throttled_logs_once_per_interval_and_counts_the_rest() {
        let t = Throttled::new(Duration::from_millis(200));
        assert_eq!(t.tick(), Some(0));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(t.tick(), Some(2));
    }
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn values_cannot_forge_lines_fields_or_terminal_escapes() {
        let key =
            "k\n2026-01-01T00:00:00Z  INFO esi::decision: decision=\"allow\"\u{1b}[2J\u{202e}";
        let out = capture(|| {
            let span = tracing::info_span!("request", route = %key);
            let _g = span.enter();
            tracing::info!(target: "esi::decision", resource = %key, debug = ?key, plain = "a b", n = 3, decision = "deny", "msg {key}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(!out.contains('\u{202e}'), "{out}");
        assert!(out.contains(r#"resource="k\n2026"#), "{out}");
        assert!(out.contains(r#"\"allow\"\u{1b}[2J\u{202e}""#), "{out}");
        assert!(out.contains(r#"plain="a b""#), "{out}");
        assert!(out.contains(" n=3 decision=deny"), "{out}");
        // The only `decision` field is the real one; the forged ones are escaped text.
        assert!(!out.contains(r#" decision="allow""#), "{out}");
        assert!(!out.contains(" decision=allow"), "{out}");
        assert_eq!(out.matches(" decision=deny").count(), 1, "{out}");
    }

    #[test]
    fn plain_tokens_stay_readable() {
        assert_eq!(escape_value("vault/db-creds"), "vault/db-creds");
        assert_eq!(escape_value(""), "\"\"");
        assert_eq!(escape_value("a=b"), "\"a=b\"");
        assert_eq!(escape_value("\u{7f}"), "\"\\u{7f}\"");
    }
}
