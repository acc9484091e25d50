//! What the proxy observes, and its renderers (socat-like text and hex, JSON lines, pcap,
//! per-connection stream files), with L7 decoding.
//!
//! The relay sends [`event::Event`]s into a bounded channel; one writer thread drains it and feeds
//! every sink. Bounded + awaited send means a slow disk slows the proxy instead of dropping bytes
//! (lossless by default). A sink that fails (disk full) is stopped with a final marker and an
//! error report; forwarding never depends on a sink.

pub mod event;
pub mod hex;
pub mod json;
pub mod l7;
pub mod payload;
pub mod pcap;
pub mod streams;
pub mod text;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use event::Event;
use tokio::sync::mpsc;

/// Errors opening a dump destination.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// A file or directory could not be created.
    #[error("cannot open dump destination {path}: {error}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why (not a `source`: the message already says it, once).
        error: std::io::Error,
    },
}

/// A renderer that receives every event.
pub trait Sink: Send {
    /// A short name for error reports ("text dump to /x", "pcap /y").
    fn name(&self) -> String;
    /// Render one event.
    fn event(&mut self, ev: &Event) -> std::io::Result<()>;
    /// Push buffered output out (called whenever the queue runs empty).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Write a final marker line saying why the dump stopped, where the format has room for one.
    fn stop_marker(&mut self, _why: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// A report from the tap writer thread about a sink that failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkFailure {
    /// Which sink.
    pub sink: String,
    /// The error.
    pub error: String,
    /// The sink stopped because it reached a limit it was given (a size cap), not from a fault.
    pub limit_reached: bool,
}

/// The error a sink returns when it stops at a limit it was configured with.
#[derive(Debug)]
pub struct LimitReached(pub String);

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitReached {}

/// Called by the writer thread when a sink fails (the cmd layer logs it).
pub type FailureHook = Box<dyn Fn(SinkFailure) + Send>;

/// The relay's end of the tap: cheap to clone.
#[derive(Clone, Debug)]
pub struct Tap {
    tx: mpsc::Sender<Event>,
}

impl Tap {
    /// Queue an event, waiting while the queue is full (lossless: the proxy slows down).
    pub async fn send(&self, ev: Event) {
        // An error means every sink has stopped: the event has nowhere to go.
        let _ = self.tx.send(ev).await;
    }

    /// True when every sink has stopped (the relay may stop producing events).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The writer thread; join it after the last [`Tap`] clone is gone to flush everything.
pub struct TapWriter {
    handle: std::thread::JoinHandle<()>,
}

impl TapWriter {
    /// Wait until every queued event is written and the sinks are flushed.
    pub fn finish(self) {
        let _ = self.handle.join();
    }
}

/// Start the writer thread over `sinks`; `capacity` events may be queued before senders wait.
pub fn start(
    sinks: Vec<Box<dyn Sink>>,
    capacity: usize,
    on_failure: FailureHook,
) -> (Tap, TapWriter) {
    let (tx, mut rx) = mpsc::channel::<Event>(capacity.max(1));
    let handle = std::thread::Builder::new()
        .name("nettool-tap".into())
        .spawn(move || {
            let mut sinks: Vec<Option<Box<dyn Sink>>> = sinks.into_iter().map(Some).collect();
            let fail = |slot: &mut Option<Box<dyn Sink>>, e: std::io::Error| {
                if let Some(mut s) = slot.take() {
                    let why = format!("{e}; forwarding continues, this dump is stopped");
                    // Best effort: the destination is what just failed.
                    let _ = s.stop_marker(&why).and_then(|_| s.flush());
                    on_failure(SinkFailure {
                        sink: s.name(),
                        error: e.to_string(),
                        limit_reached: e
                            .get_ref()
                            .is_some_and(|i| i.downcast_ref::<LimitReached>().is_some()),
                    });
                }
            };
            loop {
                let ev = match rx.try_recv() {
                    Ok(ev) => ev,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        for slot in sinks.iter_mut() {
                            if let Some(Err(e)) = slot.as_mut().map(|s| s.flush()) {
                                fail(slot, e);
                            }
                        }
                        match rx.blocking_recv() {
                            Some(ev) => ev,
                            None => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                };
                for slot in sinks.iter_mut() {
                    if let Some(Err(e)) = slot.as_mut().map(|s| s.event(&ev)) {
                        fail(slot, e);
                    }
                }
                if let Event::Data { bytes, .. } = ev {
                    payload::recycle(bytes);
                }
                if sinks.iter().all(|s| s.is_none()) {
                    // Dropping the receiver tells the relays to stop producing events.
                    break;
                }
            }
            for slot in sinks.iter_mut() {
                if let Some(Err(e)) = slot.as_mut().map(|s| s.flush()) {
                    fail(slot, e);
                }
            }
        })
        .expect("spawn the tap writer thread");
    (Tap { tx }, TapWriter { handle })
}

/// A shared, boxed writer (stdout or a file) that a console sink renders into.
pub type Output = Box<dyn Write + Send>;

/// Open a dump file for appending, readable only by its owner (payloads carry secrets).
pub fn open_private(path: &std::path::Path, append: bool) -> Result<std::fs::File, TapError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path).map_err(|error| TapError::Open {
        path: path.into(),
        error,
    })
}

/// Shared state for console renderers: one L7 decoder per connection and direction.
pub(crate) struct Decoders {
    on: bool,
    map: std::collections::HashMap<(u64, event::Direction), l7::StreamDecoder>,
}

impl Decoders {
    pub(crate) fn new(on: bool) -> Self {
        Decoders {
            on,
            map: Default::default(),
        }
    }

    /// Feed the event; returns what the decoders recognised.
    pub(crate) fn feed(&mut self, ev: &Event) -> Vec<l7::L7Event> {
        if !self.on {
            return Vec::new();
        }
        match ev {
            Event::Data {
                conn, dir, bytes, ..
            } => {
                let dec = self
                    .map
                    .entry((conn.id, *dir))
                    .or_insert_with(|| l7::StreamDecoder::new(conn, *dir));
                dec.feed(bytes)
            }
            Event::Close { conn, .. } => {
                let mut out = Vec::new();
                for dir in [
                    event::Direction::ClientToServer,
                    event::Direction::ServerToClient,
                ] {
                    if let Some(mut d) = self.map.remove(&(conn.id, dir)) {
                        out.extend(d.finish());
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

/// The two legs' address pairs as one human string: `client -> listen => local -> backend`.
pub fn describe_conn(c: &Arc<event::ConnInfo>) -> String {
    format!(
        "{} -> {} => {} -> {}",
        c.client, c.listen, c.local, c.backend
    )
}
