//! Reader threads that do nothing but drain the kernel's queues into a channel: one per nftrace
//! netlink socket, one for the kfree_skb trace_pipe. The session decodes, joins and prints on
//! its own thread; a slow joiner then costs memory, not events (a full netlink buffer drops
//! them for good). Each event is stamped with the window the kernel sent it in.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::drops::{mono_now, DropTracer, KernelDrop};
use super::nftrace::{decode_datagram, NftTrace, TraceSocket};

/// How many decoded events may wait for the session before readers drop (and count) new ones.
const MAX_BACKLOG: usize = 2_000_000;
/// Datagrams per recvmmsg, and the room for each.
const BATCH: usize = 64;
const SLOT: usize = 16 * 1024;
/// How often a reader looks at its stop flag when nothing comes.
const POLL_MS: i32 = 50;

/// One trace event and when it was sent: after `after` (the socket was seen empty then) and
/// before `at` (when it was read). The netlink message carries no time of its own.
#[derive(Debug, Clone)]
pub(crate) struct Stamped {
    /// CLOCK_MONOTONIC seconds when the socket was last seen empty before this was read.
    pub after: f64,
    /// CLOCK_MONOTONIC seconds when it was read.
    pub at: f64,
    /// The event.
    pub trace: NftTrace,
}

/// What the readers hand the session.
pub(crate) enum Feed {
    /// Trace events of point `point`, in the order the kernel queued them.
    Events(usize, Vec<Stamped>),
    /// Kernel drops, in the order they were written.
    Drops(Vec<KernelDrop>),
}

/// What a reader counted by the time it stopped.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReaderStats {
    /// ENOBUFS errors: times the kernel said it had dropped some events.
    pub overruns: u64,
    /// Events the kernel dropped because the socket buffer was full (SK_MEMINFO_DROPS).
    pub kernel_dropped: u64,
    /// Events dropped here because the session was more than MAX_BACKLOG behind.
    pub backlog_dropped: u64,
}

/// The running readers.
pub(crate) struct Readers {
    stop: Arc<AtomicBool>,
    backlog: Arc<AtomicUsize>,
    events: Vec<JoinHandle<ReaderStats>>,
    drops: Option<JoinHandle<DropTracer>>,
    /// Where the session receives.
    pub rx: Receiver<Feed>,
    tx: Sender<Feed>,
}

fn wait_readable(fd: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, POLL_MS) };
}

impl Readers {
    /// No readers yet: add them with [`Readers::events`] and [`Readers::drops`].
    pub(crate) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Readers {
            stop: Arc::new(AtomicBool::new(false)),
            backlog: Arc::new(AtomicUsize::new(0)),
            events: Vec::new(),
            drops: None,
            rx,
            tx,
        }
    }

    /// The session took `n` events off the channel.
    pub(crate) fn consumed(&self, n: usize) {
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }

    /// Drain `socket` (point `point`) on a thread of its own.
    pub(crate) fn events(&mut self, point: usize, socket: TraceSocket) -> std::io::Result<()> {
        let (stop, backlog, tx) = (self.stop.clone(), self.backlog.clone(), self.tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("nftrace-{point}"))
            .spawn(move || {
                let mut stats = ReaderStats::default();
                let mut buf = vec![0u8; BATCH * SLOT];
                let mut lens = [0usize; BATCH];
                let mut empty_at = mono_now();
                while !stop.load(Ordering::Relaxed) {
                    wait_readable(socket.raw_fd());
                    let mut batch = Vec::new();
                    loop {
                        let t = mono_now();
                        match socket.read_batch(&mut buf, SLOT, &mut lens) {
                            Ok(0) => {
                                // Empty at t: whatever comes later was sent after t.
                                empty_at = t;
                                break;
                            }
                            Ok(n) => {
                                let at = mono_now();
                                for (i, &len) in lens.iter().enumerate().take(n) {
                                    let d = &buf[i * SLOT..i * SLOT + len.min(SLOT)];
                                    batch.extend(decode_datagram(d).into_iter().map(|trace| {
                                        Stamped {
                                            after: empty_at,
                                            at,
                                            trace,
                                        }
                                    }));
                                }
                                // Hand over in pieces so the session starts early.
                                if batch.len() >= 4096 {
                                    break;
                                }
                            }
                            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                                stats.overruns += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let n = batch.len();
                    if backlog.load(Ordering::Relaxed) + n > MAX_BACKLOG {
                        stats.backlog_dropped += n as u64;
                        continue;
                    }
                    backlog.fetch_add(n, Ordering::Relaxed);
                    if tx.send(Feed::Events(point, batch)).is_err() {
                        break;
                    }
                }
                stats.kernel_dropped = socket.dropped().unwrap_or(0);
                stats
            })?;
        self.events.push(h);
        Ok(())
    }

    /// Read kfree_skb events from `tracer` on a thread of its own.
    pub(crate) fn drops(&mut self, mut tracer: DropTracer) -> std::io::Result<()> {
        let (stop, tx) = (self.stop.clone(), self.tx.clone());
        let h = std::thread::Builder::new()
            .name("kfree_skb".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    wait_readable(tracer.raw_fd());
                    let d = tracer.read();
                    if !d.is_empty() && tx.send(Feed::Drops(d)).is_err() {
                        break;
                    }
                }
                tracer
            })?;
        self.drops = Some(h);
        Ok(())
    }

    /// Stop every reader; return their counts summed and the drop tracer (to remove it).
    pub(crate) fn stop(&mut self) -> (ReaderStats, Option<DropTracer>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sum = ReaderStats::default();
        for h in self.events.drain(..) {
            if let Ok(s) = h.join() {
                sum.overruns += s.overruns;
                sum.kernel_dropped += s.kernel_dropped;
                sum.backlog_dropped += s.backlog_dropped;
            }
        }
        let tracer = self.drops.take().and_then(|h| h.join().ok());
        (sum, tracer)
    }
}

impl Default for Readers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop();
    }
}
