//! The operational log's JSON lines, written straight into the line buffer.
//!
//! Same shape as `tracing-subscriber`'s JSON format with `flatten_event(true)`, which the
//! server used before (log collectors and tests parse it):
//!
//! ```json
//! {"timestamp":"2026-12-04T23:28:50.123456Z","level":"INFO","message":"answered",
//!  "status":200,"target":"esi::api",
//!  "span":{"request_id":"…","method":"POST","route":"…","name":"request"},
//!  "spans":[{"request_id":"…","method":"POST","route":"…","name":"request"}]}
//! ```
//!
//! `span` is the innermost span, `spans` every span from the root; both are left out when
//! the event is outside any span. What differs is the cost: `tracing-subscriber` stores a
//! span's fields as JSON text and parses that text back into a map for every event (one
//! allocation per field, a UTF-8 check per write); [`JsonSpanFields`] stores them as JSON
//! object members that [`JsonLines`] copies into each line as they are. On a request that
//! logs one line this was about a fifth of the server's CPU (`scripts/bench.sh`, issue 15).
//!
//! Strings are escaped per RFC 8259 §7, and U+2028/U+2029 as well (JavaScript consumers),
//! so no value can end a line or pose as another member.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

thread_local! {
    /// Where a span's fields are formatted before they are stored (reused).
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Event formatter of the JSON operational log (see the module docs). Use it with
/// [`JsonSpanFields`] as the layer's field formatter.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// Field formatter of the JSON operational log: `"name":value` members separated by
/// commas, no braces (a span's stored fields, spliced into every line of its events).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Formatted whole into the thread's scratch text, then written at once: the span's
        // stored text is allocated once at its size, not grown field by field.
        let mut fields = Some(fields);
        let reused = SCRATCH.try_with(|cell| {
            let mut text = cell.try_borrow_mut().ok()?;
            let fields = fields.take()?;
            text.clear();
            let mut members = Members::new(Writer::new(&mut *text), false);
            fields.record(&mut members);
            let result = members.result.and_then(|()| writer.write_str(&text));
            if text.capacity() > 64 * 1024 {
                *text = String::new();
            }
            Some(result)
        });
        match (reused, fields) {
            (Ok(Some(result)), _) => result,
            (_, Some(fields)) => {
                let mut members = Members::new(writer, false);
                fields.record(&mut members);
                members.result
            }
            // Taken and recorded above.
            (_, None) => Ok(()),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Fields recorded later (`Span::record`) join the members already stored.
        let separate = !current.fields.is_empty();
        let mut members = Members::new(current.as_writer(), separate);
        fields.record(&mut members);
        members.result
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate: their own level and target, not `log`'s.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut members = Members::new(writer.by_ref(), true);
        event.record(&mut members);
        members.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<_> = scope.from_root().collect();
            let span_object = |writer: &mut Writer<'_>, span: &_| -> fmt::Result {
                let span: &tracing_subscriber::registry::SpanRef<'_, S> = span;
                writer.write_char('{')?;
                let extensions = span.extensions();
                let stored = extensions
                    .get::<FormattedFields<N>>()
                    .map_or("", |f| f.fields.as_str());
                writer.write_str(stored)?;
                if !stored.is_empty() {
                    writer.write_char(',')?;
                }
                writer.write_str("\"name\":")?;
                write_json_str(writer, span.name())?;
                writer.write_char('}')
            };
            if let Some(leaf) = spans.last() {
                writer.write_str(",\"span\":")?;
                span_object(&mut writer, leaf)?;
                writer.write_str(",\"spans\":[")?;
                for (i, span) in spans.iter().enumerate() {
                    if i > 0 {
                        writer.write_char(',')?;
                    }
                    span_object(&mut writer, span)?;
                }
                writer.write_char(']')?;
            }
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as JSON object members into a line.
struct Members<'w> {
    writer: Writer<'w>,
    /// Whether the next member needs a comma before it.
    separate: bool,
    result: fmt::Result,
}

impl<'w> Members<'w> {
    fn new(writer: Writer<'w>, separate: bool) -> Self {
        Members {
            writer,
            separate,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        // `log.target`, `log.file`, …: the bridge's own fields, read as metadata above.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separate = std::mem::replace(&mut self.separate, true);
        self.result = (|| {
            if separate {
                self.writer.write_char(',')?;
            }
            write_json_str(&mut self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(&mut self.writer)
        })();
    }
}

impl Visit for Members<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_json_str(w, value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: as serde_json does, those become null.
        if value.is_finite() {
            self.member(field, |w| write!(w, "{value}"));
        } else {
            self.member(field, |w| w.write_str("null"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaping(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// Writes `text` as a JSON string (quotes included).
fn write_json_str(w: &mut impl fmt::Write, text: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaping(w).write_str(text)?;
    w.write_char('"')
}

/// A writer that escapes what goes through it for the inside of a JSON string.
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            let escape: Option<&str> = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => Some(""),
                _ => None,
            };
            let Some(escape) = escape else { continue };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", c as u32)?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
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

    fn lines(ours: bool, f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let sink = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false);
        if ours {
            let subscriber = builder
                .event_format(JsonLines)
                .fmt_fields(JsonSpanFields)
                .finish();
            tracing::subscriber::with_default(subscriber, f);
        } else {
            let subscriber = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(subscriber, f);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn events() {
        let hostile = "k\"\\\n\r\t\u{1}\u{1f}\u{7f}\u{2028}\u{2029}\u{202e}é😀";
        tracing::info!(target: "esi::outside", n = 3, "no span");
        let outer = tracing::info_span!("request", request_id = "r-1", route = %hostile);
        let _o = outer.enter();
        let inner = tracing::info_span!("inner", depth = 2_u64, later = tracing::field::Empty);
        let _i = inner.enter();
        inner.record("later", "recorded");
        tracing::warn!(
            target: "esi::decision",
            resource = %hostile,
            debug = ?hostile,
            list = ?vec!["a", "b"],
            neg = -4_i64,
            f = 1.5_f64,
            nan = f64::NAN,
            yes = true,
            "msg {hostile}"
        );
    }

    /// Same members and values as tracing-subscriber's JSON format for the same events
    /// (everything but the timestamp, which differs in time only).
    #[test]
    fn lines_match_tracing_subscribers_json_format() {
        let mut ours = lines(true, events);
        let mut theirs = lines(false, events);
        assert_eq!(ours.len(), 2);
        for line in ours.iter_mut().chain(theirs.iter_mut()) {
            let ts = line.as_object_mut().unwrap().remove("timestamp").unwrap();
            let ts = ts.as_str().unwrap();
            assert!(ts.ends_with('Z') && ts.len() >= 20, "{ts}");
        }
        assert_eq!(ours, theirs);
        assert!(ours[0].get("span").is_none() && ours[0].get("spans").is_none());
        assert_eq!(ours[1]["span"]["later"], "recorded");
        assert_eq!(ours[1]["spans"][0]["name"], "request");
    }

    #[test]
    fn strings_are_escaped_as_json_and_never_break_a_line() {
        let all: String = (0u32..0x80)
            .chain([0x2028, 0x2029, 0x202e, 0x1F600])
            .filter_map(char::from_u32)
            .collect();
        let mut out = String::new();
        write_json_str(&mut out, &all).unwrap();
        assert!(!out.contains('\n') && !out.contains('\r'));
        assert!(!out.contains('\u{2028}') && !out.contains('\u{2029}'));
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), all);
    }
}
