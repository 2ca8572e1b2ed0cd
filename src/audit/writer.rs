//! The audit log's writer: group commit.
//!
//! A line is queued (one short lock, one copy) and, when its emitter asked for it
//! ([`collect`]), comes with a [`Ticket`] that resolves once the line is in the sink or
//! could not be put there. The first emitter that finds nobody writing writes what is
//! queued with one `write(2)`, and goes on batch after batch until the queue is empty;
//! an emitter that finds a write under way returns at once, its line goes with the next
//! batch, and its request *task* waits for the ticket while its thread serves other
//! requests. So a busy server pays one system call for the lines of the requests under way,
//! and no thread sleeps on another's write: before, each line took the sink's lock for its
//! own `write(2)` and the other worker thread slept on that lock (about 0.7 futex calls per
//! request). A writer thread of its own was measured too and lost: waking it and having it
//! wake the request tasks from outside the runtime cost two futex calls per request, more
//! than the writes it saved (issue 15, docs/performance.md).
//!
//! Bounded: at most [`AUDIT_QUEUE_BYTES`] wait (they pile up only while a write is slow);
//! a line beyond is not queued and its ticket fails at once (the request is refused with
//! 503, as for a failed write). The log never holds part of a line: a short write is cut
//! back to the last whole line, and the lines after it fail.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::AuditError;
use crate::logging::Throttled;
use crate::metrics::METRICS;

/// Most bytes of audit lines waiting for the writer thread (lines, newlines included). A line
/// that would go beyond is refused: its emitter is told it was not written.
pub const AUDIT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Capacity the writer keeps for its batch between writes.
const BATCH_BYTES: usize = 64 * 1024;

/// Where lines go.
pub(super) enum Sink {
    /// A writer given by the caller (stdout, tests).
    Writer(Box<dyn Write + Send>),
    /// A file, which [`super::AuditReopener::reopen`] can open again by its path.
    File { path: PathBuf, file: File },
}

impl Sink {
    /// Writes a batch of whole lines (`ends`: the offset after each line's newline) and
    /// returns how many of them are in the sink, first to last. A file cut short by a full
    /// disk is truncated back to its last whole line, so the log never holds part of a line;
    /// a writer's failure (stdout) counts every line of the batch as not written.
    fn write_batch(&mut self, batch: &[u8], ends: &[usize]) -> usize {
        match self {
            Sink::Writer(w) => {
                if w.write_all(batch).and_then(|()| w.flush()).is_ok() {
                    ends.len()
                } else {
                    0
                }
            }
            Sink::File { file, .. } => append_whole_lines(file, batch, ends, |file, extra| {
                if let Ok(len) = file.metadata().map(|m| m.len()) {
                    let _ = file.set_len(len.saturating_sub(extra));
                }
            }),
        }
    }

    /// Opens the file at its path again. `Ok(false)` when the sink is not a file.
    pub(super) fn reopen(&mut self) -> Result<bool, AuditError> {
        let Sink::File { path, file } = self else {
            return Ok(false);
        };
        let new = open_append(path)?;
        let _ = file.flush();
        *file = new;
        Ok(true)
    }
}

/// Writes `batch` (whole lines; `ends`: the offset after each line's newline) to an
/// append-only `file` and returns how many lines landed whole. One `write` in the usual
/// case; after a short write, `cut(file, n)` removes the `n` bytes of the line that landed
/// only in part (the file is appended to by the writer thread only, so they are its last).
fn append_whole_lines<F: Write>(
    file: &mut F,
    batch: &[u8],
    ends: &[usize],
    cut: impl FnOnce(&mut F, u64),
) -> usize {
    let mut landed = 0;
    while landed < batch.len() {
        match file.write(&batch[landed..]) {
            Ok(0) => break,
            Ok(n) => landed += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let whole = ends.partition_point(|&end| end <= landed);
    let kept = if whole == 0 { 0 } else { ends[whole - 1] };
    if landed > kept {
        cut(file, (landed - kept) as u64);
    }
    whole
}

/// Opens `path` for appending, creating it with mode 0600.
pub(super) fn open_append(path: &Path) -> Result<File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// Whether one audit line was written: resolved by the writer thread after the line's batch.
#[derive(Debug)]
pub struct Ticket(TicketState);

#[derive(Debug)]
enum TicketState {
    /// Queued; the writer thread sends the outcome.
    Queued(oneshot::Receiver<bool>),
    /// Refused before it was queued (queue full, writer gone).
    Refused,
}

impl Ticket {
    /// Waits for the line's batch; `true` once the line is in the sink.
    pub async fn written(self) -> bool {
        match self.0 {
            TicketState::Queued(rx) => rx.await.unwrap_or(false),
            TicketState::Refused => false,
        }
    }

    /// [`Ticket::written`] for a thread outside the async runtime (tests, shutdown).
    ///
    /// # Panics
    /// Inside an async runtime's thread (tokio forbids blocking there).
    pub fn wait(self) -> bool {
        match self.0 {
            TicketState::Queued(rx) => rx.blocking_recv().unwrap_or(false),
            TicketState::Refused => false,
        }
    }
}

/// The tickets of the audit lines written while a [`collect`] closure ran.
#[derive(Debug, Default)]
#[must_use = "an audit line is only known to be written once its receipt is awaited"]
pub struct Receipts(Vec<Ticket>);

impl Receipts {
    /// `true` once every line is in the sink (at once when there were none: no audit log,
    /// or nothing was audited); `false` as soon as one was not written.
    pub async fn written(self) -> bool {
        for ticket in self.0 {
            if !ticket.written().await {
                return false;
            }
        }
        true
    }

    /// [`Receipts::written`] for a thread outside the async runtime.
    ///
    /// # Panics
    /// Inside an async runtime's thread.
    pub fn wait(self) -> bool {
        self.0.into_iter().all(Ticket::wait)
    }

    /// Adds the receipts of another [`collect`].
    pub fn extend(&mut self, other: Receipts) {
        self.0.extend(other.0);
    }

    /// How many lines these receipts are for.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no line was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

thread_local! {
    /// Tickets of the [`collect`] running on this thread, if any.
    static COLLECTOR: RefCell<Option<Vec<Ticket>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the receipts of every audit line written on this
/// thread while it ran (decisions, credential events). `f` is synchronous, so no other task
/// runs on the thread meanwhile: the receipts are exactly the caller's lines. Await
/// [`Receipts::written`] before answering: an answer whose audit line was not written must
/// not leave the server (Vault likewise refuses requests no audit device can record).
pub fn collect<T>(f: impl FnOnce() -> T) -> (T, Receipts) {
    let outer = COLLECTOR.with(|c| c.borrow_mut().replace(Vec::new()));
    let result = f();
    let mine = COLLECTOR.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    (result, Receipts(mine.unwrap_or_default()))
}

/// Whether a [`collect`] runs on this thread (a line then needs a ticket).
fn collecting() -> bool {
    COLLECTOR
        .try_with(|c| c.try_borrow().is_ok_and(|c| c.is_some()))
        .unwrap_or(false)
}

/// Gives a ticket to the running [`collect`].
fn hand_in(ticket: Ticket) {
    let _ = COLLECTOR.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut()
            && let Some(tickets) = c.as_mut()
        {
            tickets.push(ticket);
        }
    });
}

/// Set while a thread writes the queue out; dropped only when that thread unwinds (it is
/// forgotten on the normal way out): fails the lines still queued and frees the queue.
struct Writing<'a>(&'a Committer);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        let failed = q.ends.len();
        q.bytes.clear();
        q.ends.clear();
        // Dropping a sender resolves its ticket as not written.
        q.waiters.clear();
        q.busy = false;
        if q.flushers > 0 {
            self.0.written.notify_all();
        }
        drop(q);
        if failed > 0 {
            self.0.failed(failed);
        }
    }
}

/// The queue shared by the emitting threads; whichever finds nobody writing writes.
pub(super) struct Committer {
    queue: Mutex<Queued>,
    /// Signalled when a writing thread has written the queue out (for [`Committer::flush`]).
    written: Condvar,
    pub(super) sink: Mutex<Sink>,
    complaints: Throttled,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    /// Offset after each queued line.
    ends: Vec<usize>,
    /// Line index (in `ends`) and where its outcome goes.
    waiters: Vec<(usize, oneshot::Sender<bool>)>,
    /// A thread is writing: it takes what is queued meanwhile with its next batch.
    busy: bool,
    /// Threads in [`Committer::flush`] (only they need `written` signalled).
    flushers: usize,
    /// The buffers of the batch being written, kept for the next one.
    spare: Batch,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    waiters: Vec<(usize, oneshot::Sender<bool>)>,
}

impl Committer {
    pub(super) fn new(sink: Sink) -> Self {
        Committer {
            queue: Mutex::new(Queued::default()),
            written: Condvar::new(),
            sink: Mutex::new(sink),
            complaints: Throttled::new(Duration::from_secs(10)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        // A panic while holding the lock leaves whole lines only (each is pushed with its
        // end at once): keep auditing.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one whole line (newline included); its ticket goes to the running
    /// [`collect`], if any. When no thread is writing, this one writes what is queued,
    /// batch after batch, until the queue is empty; otherwise it returns at once and the
    /// writing thread takes the line with its next batch.
    pub(super) fn push(&self, line: &[u8]) {
        let wants_ticket = collecting();
        let mut q = self.lock();
        if q.bytes.len() + line.len() > AUDIT_QUEUE_BYTES {
            drop(q);
            self.failed(1);
            if wants_ticket {
                hand_in(Ticket(TicketState::Refused));
            }
            return;
        }
        q.bytes.extend_from_slice(line);
        let end = q.bytes.len();
        q.ends.push(end);
        if wants_ticket {
            let (tx, rx) = oneshot::channel();
            let index = q.ends.len() - 1;
            q.waiters.push((index, tx));
            hand_in(Ticket(TicketState::Queued(rx)));
        }
        if !q.busy {
            self.write_queued(q);
        }
    }

    /// Writes what is queued, batch after batch, until the queue is empty (the caller found
    /// nobody writing).
    fn write_queued<'a>(&'a self, mut q: MutexGuard<'a, Queued>) {
        q.busy = true;
        drop(q);
        // Should this thread unwind mid-write, the queue must not stay `busy` with nobody
        // writing: the lines waiting then fail (their requests get 503) and the next line
        // finds the queue free.
        let writing = Writing(self);
        let mut q = self.lock();
        loop {
            let mut batch = std::mem::take(&mut q.spare);
            std::mem::swap(&mut q.bytes, &mut batch.bytes);
            std::mem::swap(&mut q.ends, &mut batch.ends);
            std::mem::swap(&mut q.waiters, &mut batch.waiters);
            drop(q);
            self.write_batch(&mut batch);
            q = self.lock();
            q.spare = batch;
            if q.ends.is_empty() {
                q.busy = false;
                if q.flushers > 0 {
                    self.written.notify_all();
                }
                drop(q);
                std::mem::forget(writing);
                return;
            }
        }
    }

    /// Test hook: what an unwinding writer leaves.
    #[cfg(test)]
    fn is_free(&self) -> bool {
        let q = self.lock();
        !q.busy && q.ends.is_empty() && q.waiters.is_empty()
    }

    /// Writes one batch, tells each waiting emitter its line's outcome and empties it.
    fn write_batch(&self, batch: &mut Batch) {
        let whole = {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            sink.write_batch(&batch.bytes, &batch.ends)
        };
        for (index, tx) in batch.waiters.drain(..) {
            let _ = tx.send(index < whole);
        }
        if whole == batch.ends.len() {
            METRICS.audit_log_ok.set(1);
        } else {
            self.failed(batch.ends.len() - whole);
        }
        batch.bytes.clear();
        batch.ends.clear();
        if batch.bytes.capacity() > 4 * BATCH_BYTES {
            batch.bytes = Vec::with_capacity(BATCH_BYTES);
        }
    }

    /// Counts `lines` lines not written and says so on stderr (at most once per 10 s).
    fn failed(&self, lines: usize) {
        METRICS.audit_log_ok.set(0);
        METRICS
            .audit_events
            .with_label_values(&["write_error"])
            .inc_by(lines as u64);
        // Not through `tracing`: the audit layer would see its own complaint. stderr is the
        // operational log.
        if let Some(suppressed) = self.complaints.tick() {
            // `eprintln!` would panic on a closed stderr, on the writing thread.
            let _ = writeln!(
                std::io::stderr(),
                "esi-server: cannot write the audit log; requests that need an audit line are refused with 503 ({suppressed} more failures since the last report)"
            );
        }
    }

    /// Waits until the lines queued before the call were written (or failed), at most
    /// `limit`; `false` when some were still queued then.
    pub(super) fn flush(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut q = self.lock();
        q.flushers += 1;
        let done = loop {
            if !q.busy {
                break true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            q = self
                .written
                .wait_timeout(q, left)
                .map_or_else(|p| p.into_inner().0, |(q, _)| q);
        };
        q.flushers -= 1;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file_sink(dir: &Path) -> (Sink, PathBuf) {
        let path = dir.join("audit.jsonl");
        let file = open_append(&path).unwrap();
        (
            Sink::File {
                path: path.clone(),
                file,
            },
            path,
        )
    }

    /// Writes land up to a limit, as on a disk that fills up; `writes` counts calls.
    struct Limited(
        Arc<Mutex<Vec<u8>>>,
        usize,
        Arc<std::sync::atomic::AtomicUsize>,
    );
    impl Write for Limited {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut out = self.0.lock().unwrap();
            let room = self.1.saturating_sub(out.len());
            if room == 0 {
                return Err(std::io::Error::other("no space"));
            }
            let n = room.min(b.len());
            out.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn limited(
        room: usize,
    ) -> (
        Limited,
        Arc<Mutex<Vec<u8>>>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Limited(out.clone(), room, writes.clone()), out, writes)
    }

    #[test]
    fn lines_queued_during_a_write_go_in_one_batch_and_each_ticket_gets_its_outcome() {
        let (sink, out, writes) = limited(usize::MAX);
        let committer = Committer::new(Sink::Writer(Box::new(sink)));
        // A write under way (another thread's): lines queue up.
        committer.lock().busy = true;
        let ((), receipts) = collect(|| {
            for n in 0..100 {
                committer.push(format!("{{\"n\":{n}}}\n").as_bytes());
            }
        });
        assert_eq!(receipts.len(), 100);
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 0);
        // That write ends; the next line's emitter writes everything queued at once.
        committer.lock().busy = false;
        let ((), last) = collect(|| committer.push(b"{\"n\":100}\n"));
        assert!(receipts.wait() && last.wait());
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Lines outside a collect get no ticket but are written all the same.
        committer.push(b"{\"n\":101}\n");
        let ((), none) = collect(|| ());
        assert!(none.is_empty());
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        let want: Vec<String> = (0..=101).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(got, want);
        assert!(!committer.lock().busy);
    }

    #[test]
    fn concurrent_emitters_lose_no_line_and_interleave_none() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, path) = file_sink(dir.path());
        let committer = Arc::new(Committer::new(sink));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let committer = committer.clone();
                std::thread::spawn(move || {
                    let ((), receipts) = collect(|| {
                        for n in 0..500 {
                            committer.push(format!("{{\"t\":{t},\"n\":{n}}}\n").as_bytes());
                        }
                    });
                    assert!(receipts.wait());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(committer.flush(Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(seen.insert((v["t"].as_u64().unwrap(), v["n"].as_u64().unwrap())));
        }
        assert_eq!(seen.len(), 2000);
    }

    #[test]
    fn a_short_write_keeps_whole_lines_and_fails_the_rest() {
        // A writer sink (stdout) cannot be cut back: the whole batch fails.
        let (w, _, _) = limited(10);
        let mut sink = Sink::Writer(Box::new(w));
        assert_eq!(sink.write_batch(b"aaaa\nbbbb\ncccc\n", &[5, 10, 15]), 0);

        // An append-only file is cut back to its last whole line.
        let (mut file, out, _) = limited(4 + 12);
        out.lock().unwrap().extend_from_slice(b"old\n");
        let cut = |f: &mut Limited, n: u64| {
            let mut out = f.0.lock().unwrap();
            let len = out.len() - n as usize;
            out.truncate(len);
        };
        assert_eq!(
            append_whole_lines(&mut file, b"aaaa\nbbbb\ncccc\n", &[5, 10, 15], cut),
            2
        );
        assert_eq!(&out.lock().unwrap()[..], b"old\naaaa\nbbbb\n");
        // Part of the one line lands: it is cut, no line is written.
        assert_eq!(append_whole_lines(&mut file, b"dd\n", &[3], cut), 0);
        assert_eq!(&out.lock().unwrap()[..], b"old\naaaa\nbbbb\n");

        // Through the queue: the tickets of the lines after the cut fail.
        let dir = tempfile::tempdir().unwrap();
        let (sink, path) = file_sink(dir.path());
        let committer = Committer::new(sink);
        committer.lock().busy = true;
        let ((), first) = collect(|| committer.push(b"one\n"));
        let ((), second) = collect(|| committer.push(b"two\n"));
        committer.lock().busy = false;
        committer.push(b"three\n");
        assert!(first.wait() && second.wait());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
    }

    #[test]
    fn a_full_queue_refuses_lines_at_once() {
        let committer = Committer::new(Sink::Writer(Box::new(std::io::sink())));
        // A write under way that does not end: lines stay queued.
        committer.lock().busy = true;
        let line = vec![b'x'; 1024 * 1024];
        let count = AUDIT_QUEUE_BYTES / line.len();
        let ((), receipts) = collect(|| {
            for _ in 0..count {
                committer.push(&line);
            }
        });
        assert_eq!(receipts.len(), count);
        let ((), refused) = collect(|| committer.push(&line));
        assert!(!refused.wait(), "a line beyond the bound was queued");
        // The queued ones are written by the thread whose write was under way.
        let mut q = committer.lock();
        q.busy = false;
        committer.write_queued(q);
        assert!(receipts.wait());
        assert!(!committer.lock().busy);
    }

    #[test]
    fn flush_waits_for_the_write_under_way() {
        let committer = Arc::new(Committer::new(Sink::Writer(Box::new(std::io::sink()))));
        committer.lock().busy = true;
        committer.push(b"a\n");
        assert!(!committer.flush(Duration::from_millis(20)));
        let other = {
            let committer = committer.clone();
            std::thread::spawn(move || committer.flush(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        // The writing thread finishes its batch loop (as `push` does).
        {
            let mut q = committer.lock();
            q.bytes.clear();
            q.ends.clear();
            q.busy = false;
            committer.written.notify_all();
        }
        assert!(other.join().unwrap());
        assert!(committer.flush(Duration::from_millis(1)));
    }

    #[test]
    fn a_writer_that_panics_fails_the_waiting_lines_and_frees_the_queue() {
        /// Panics on its first write (a bug in a sink), then works.
        struct PanicsOnce(bool, Arc<Mutex<Vec<u8>>>);
        impl Write for PanicsOnce {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if !self.0 {
                    self.0 = true;
                    panic!("sink bug");
                }
                self.1.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let committer = Arc::new(Committer::new(Sink::Writer(Box::new(PanicsOnce(
            false,
            out.clone(),
        )))));
        // Lines wait behind a write under way, then that writer's thread writes and panics.
        committer.lock().busy = true;
        let ((), waiting) = collect(|| committer.push(b"queued\n"));
        let panicked = {
            let committer = committer.clone();
            std::thread::spawn(move || {
                let mut q = committer.lock();
                q.busy = false;
                committer.write_queued(q);
            })
            .join()
        };
        assert!(panicked.is_err());
        assert!(
            !waiting.wait(),
            "a line the panicking writer held was reported written"
        );
        assert!(
            committer.is_free(),
            "the queue stayed busy with nobody writing"
        );
        // The next line is written by its own emitter.
        let ((), next) = collect(|| committer.push(b"next\n"));
        assert!(next.wait());
        assert_eq!(&out.lock().unwrap()[..], b"next\n");
    }

    #[test]
    fn collects_nest_and_each_sees_its_own_lines() {
        let committer = Committer::new(Sink::Writer(Box::new(std::io::sink())));
        let (inner, outer) = collect(|| {
            committer.push(b"outer\n");
            let ((), inner) = collect(|| committer.push(b"inner\n"));
            committer.push(b"outer again\n");
            inner
        });
        assert_eq!((inner.len(), outer.len()), (1, 2));
        assert!(inner.wait() && outer.wait());
    }
}
