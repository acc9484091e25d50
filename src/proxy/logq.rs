//! The proxy's log lines go through a bounded queue to a thread of their own, which writes them
//! to the destination (a [`LineSink`]: a syslog daemon, a file, stderr). A destination that
//! stalls (a syslog daemon that does not read, a FIFO nobody reads, a hung NFS mount, a full
//! pipe on stderr) then costs log lines, never forwarding: the tokio workers that relay traffic
//! only queue a line, and a line that finds the queue full is dropped and counted. The count is
//! written as a warning line right before the next line that gets into the queue (where the
//! lines are missing), or at the flush if none does. While nothing is forwarded (startup, exit)
//! the caller can make a line that finds the queue full wait for room instead, up to a deadline:
//! a port range logs thousands of listeners at once, and those lines are the ones people read.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Level;
use crate::tap::event::Timestamp;

/// Lines waiting for the log thread. While the destination does not keep up, lines past these
/// are dropped (and counted) instead of making the forwarding threads wait.
pub(crate) const QUEUE_LINES: usize = 1024;

/// A destination for log lines, written from the queue's thread (so a write may block).
pub(crate) trait LineSink: Send + 'static {
    /// Write one line, logged at `at`.
    fn write_line(&mut self, level: Level, at: Timestamp, msg: &str) -> io::Result<()>;
    /// The destination in words, for the drop report: "the log file /var/log/x.log".
    fn describe(&self) -> String;
}

/// The text of the warning that reports `n` dropped lines.
pub(crate) fn drop_report(n: u64, sink: &str) -> String {
    format!("{n} log line(s) dropped: {sink} did not keep up")
}

enum Msg {
    Line {
        level: Level,
        at: Timestamp,
        text: String,
        /// Lines dropped just before this one: reported first, where the gap is.
        dropped_before: u64,
    },
    /// Answered once every line queued before it has been handed to the sink.
    Flush(SyncSender<()>),
}

/// Log lines written by a thread of their own through a bounded queue; see the module doc.
#[derive(Debug)]
pub(crate) struct LogQueue {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Until then a line that finds the queue full waits for room (see [`LogQueue::patient_until`]).
    patient: Mutex<Option<Instant>>,
}

impl LogQueue {
    /// Start the writer thread over `sink`.
    pub(crate) fn start(sink: Box<dyn LineSink>) -> io::Result<LogQueue> {
        LogQueue::with_capacity(sink, QUEUE_LINES)
    }

    /// The same with room for `lines` queued lines (tests use a small queue).
    pub(crate) fn with_capacity(sink: Box<dyn LineSink>, lines: usize) -> io::Result<LogQueue> {
        let (tx, rx) = sync_channel(lines);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("nettool-log".into())
            .spawn(move || writer(sink, rx, d))?;
        Ok(LogQueue {
            tx,
            dropped,
            patient: Mutex::new(None),
        })
    }

    /// Until `by`, a line that finds the queue full waits for room instead of being dropped;
    /// `None`: drop again. For stretches where no connection is forwarded (startup, exit).
    pub(crate) fn patient_until(&self, by: Option<Instant>) {
        if let Ok(mut p) = self.patient.lock() {
            *p = by;
        }
    }

    fn is_patient(&self) -> bool {
        self.patient
            .lock()
            .map(|p| p.is_some_and(|by| Instant::now() < by))
            .unwrap_or(false)
    }

    /// Queue one line, stamped now; never waits (unless told to, see [`LogQueue::patient_until`]).
    pub(crate) fn log(&self, level: Level, msg: &str) {
        // The count rides with the next line that gets in (a plain load first: no write to the
        // shared counter on the common path where nothing was dropped).
        let dropped_before = match self.dropped.load(Ordering::Relaxed) {
            0 => 0,
            _ => self.dropped.swap(0, Ordering::Relaxed),
        };
        let mut m = Msg::Line {
            level,
            at: Timestamp::now(),
            text: msg.to_owned(),
            dropped_before,
        };
        loop {
            match self.tx.try_send(m) {
                Err(TrySendError::Full(back)) if self.is_patient() => {
                    m = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) => {
                    self.dropped
                        .fetch_add(dropped_before + 1, Ordering::Relaxed);
                    return;
                }
                _ => return,
            }
        }
    }

    /// Wait up to `within` for the queued lines to reach the sink (at exit); false if the sink
    /// did not take them in time.
    pub(crate) fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (ack, done) = sync_channel(1);
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn writer(mut sink: Box<dyn LineSink>, rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let report = |sink: &mut dyn LineSink, n: u64, at: Timestamp| {
        if n > 0 {
            let _ = sink.write_line(Level::Warn, at, &drop_report(n, &sink.describe()));
        }
    };
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Line {
                level,
                at,
                text,
                dropped_before,
            } => {
                report(&mut *sink, dropped_before, at);
                // A line the sink refuses (a daemon gone for good, a full disk) is lost; the
                // log is the only place that could say so.
                let _ = sink.write_line(level, at, &text);
            }
            Msg::Flush(ack) => {
                // Drops no later line has carried yet (at exit: the last ones).
                report(
                    &mut *sink,
                    dropped.swap(0, Ordering::Relaxed),
                    Timestamp::now(),
                );
                let _ = ack.send(());
            }
        }
    }
}

/// Text log lines to a file or stderr:
/// `2026-11-27T22:00:18.214953Z nettool-proxy[30475] warn: message`.
pub(crate) struct TextLines {
    out: Box<dyn Write + Send>,
    what: String,
    tag: String,
    pid: u32,
}

impl TextLines {
    /// Lines to `out`, described as `what` in drop reports, tagged `TAG[PID]`.
    pub(crate) fn new(out: Box<dyn Write + Send>, what: &str, tag: &str) -> TextLines {
        TextLines {
            out,
            what: what.into(),
            tag: tag.into(),
            pid: std::process::id(),
        }
    }

    /// One line, newline included.
    pub(crate) fn format(&self, level: Level, at: Timestamp, msg: &str) -> String {
        let lvl = match level {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        };
        format!("{} {}[{}] {lvl}: {msg}\n", at.rfc3339(), self.tag, self.pid)
    }
}

impl LineSink for TextLines {
    fn write_line(&mut self, level: Level, at: Timestamp, msg: &str) -> io::Result<()> {
        // One write per line: whole lines in a pipe (up to PIPE_BUF) and in a file that two
        // processes append to (docker-proxy mode runs one per address family).
        let line = self.format(level, at, msg);
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that keeps every line; it says when a write starts, and waits while the test
    /// holds `gate`.
    struct Gated {
        gate: Arc<Mutex<()>>,
        entered: std::sync::mpsc::Sender<()>,
        lines: Lines,
    }

    impl LineSink for Gated {
        fn write_line(&mut self, _: Level, _: Timestamp, msg: &str) -> io::Result<()> {
            let _ = self.entered.send(());
            let _open = self.gate.lock().unwrap();
            self.lines.lock().unwrap().push(msg.into());
            Ok(())
        }
        fn describe(&self) -> String {
            "the gated sink".into()
        }
    }

    type Lines = Arc<Mutex<Vec<String>>>;

    /// A queue of `capacity` lines over a [`Gated`] sink: the queue, the gate, the "a write
    /// started" signal and the lines written.
    fn gated(capacity: usize) -> (LogQueue, Arc<Mutex<()>>, Receiver<()>, Lines) {
        let (entered, writing) = std::sync::mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        let lines = Lines::default();
        let sink = Gated {
            gate: gate.clone(),
            entered,
            lines: lines.clone(),
        };
        let q = LogQueue::with_capacity(Box::new(sink), capacity).unwrap();
        (q, gate, writing, lines)
    }

    #[test]
    fn a_stalled_sink_costs_counted_lines_never_a_wait() {
        let (q, gate, writing, lines) = gated(8);
        let held = gate.lock().unwrap();
        // The writer takes a0 and blocks on it; a1..a8 wait in the queue; a9..a99 are dropped.
        q.log(Level::Info, "a0");
        writing.recv_timeout(Duration::from_secs(10)).unwrap();
        // log() never waits (this loop would hang if it did: the gate is held).
        for i in 1..100 {
            q.log(Level::Info, &format!("a{i}"));
        }
        assert!(
            !q.flush(Duration::from_millis(50)),
            "a blocked sink flushed"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines.lock().unwrap().len() < 9 {
            assert!(Instant::now() < deadline, "the queue did not drain");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The next line carries the report, which stands where the lines are missing.
        q.log(Level::Info, "b");
        assert!(q.flush(Duration::from_secs(10)), "the queue drains");
        let mut want: Vec<String> = (0..9).map(|i| format!("a{i}")).collect();
        want.push("91 log line(s) dropped: the gated sink did not keep up".into());
        want.push("b".into());
        assert_eq!(*lines.lock().unwrap(), want);
    }

    #[test]
    fn drops_no_line_carried_are_reported_at_the_flush() {
        let (q, gate, writing, lines) = gated(1);
        let held = gate.lock().unwrap();
        q.log(Level::Info, "x0");
        writing.recv_timeout(Duration::from_secs(10)).unwrap();
        for i in 1..5 {
            q.log(Level::Info, &format!("x{i}"));
        }
        drop(held);
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "x0",
                "x1",
                "3 log line(s) dropped: the gated sink did not keep up"
            ]
        );
    }

    #[test]
    fn a_patient_queue_waits_for_room_instead_of_dropping() {
        let (q, gate, writing, lines) = gated(2);
        // A helper holds the gate (the sink blocks) until told to let go.
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let holder = std::thread::spawn(move || {
            let _closed = g.lock().unwrap();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        held.recv().unwrap();
        q.log(Level::Info, "p0");
        writing.recv_timeout(Duration::from_secs(10)).unwrap();
        q.log(Level::Info, "p1");
        q.log(Level::Info, "p2");
        // The queue is full and stays full until the gate opens, after this thread's p3.
        q.patient_until(Some(Instant::now() + Duration::from_secs(60)));
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let _ = release.send(());
        });
        q.log(Level::Info, "p3");
        q.patient_until(None);
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(*lines.lock().unwrap(), ["p0", "p1", "p2", "p3"]);
        opener.join().unwrap();
        holder.join().unwrap();
    }

    #[test]
    fn text_lines_layout() {
        let t = TextLines::new(Box::new(io::sink()), "stderr", "nettool-proxy");
        let at = Timestamp(1_764_288_018_214_953);
        assert_eq!(
            t.format(Level::Warn, at, "a b"),
            format!(
                "2025-11-28T00:00:18.214953Z nettool-proxy[{}] warn: a b\n",
                std::process::id()
            )
        );
    }
}
