//! What the proxy observes, and its renderers (socat-like text and hex, JSON lines, pcap,
//! per-connection stream files), with L7 decoding.
//!
//! The relay sends [`event::Event`]s into a bounded channel; one writer thread drains it and feeds
//! every sink. Bounded + awaited send means a slow disk slows the proxy instead of dropping bytes
//! (lossless by default). A sink that fails (disk full) is stopped with a final marker and an
//! error report; forwarding never depends on a sink.

pub(crate) mod event;
pub(crate) mod hex;
pub(crate) mod json;
pub mod l7;
pub(crate) mod payload;
pub(crate) mod pcap;
pub(crate) mod streams;
pub(crate) mod text;

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
    /// Only one connection was left out ([`Skipped`]); the sink goes on with the others.
    pub sink_goes_on: bool,
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

/// The error a sink returns when it leaves out one connection (its file could not be opened)
/// but goes on with the others: the writer reports it and keeps the sink.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

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
                if e.get_ref()
                    .is_some_and(|i| i.downcast_ref::<Skipped>().is_some())
                {
                    if let Some(s) = slot.as_ref() {
                        on_failure(SinkFailure {
                            sink: s.name(),
                            error: e.to_string(),
                            limit_reached: false,
                            sink_goes_on: true,
                        });
                    }
                    return;
                }
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
                        sink_goes_on: false,
                    });
                }
            };
            let mut live = Live::default();
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
                live.note(&ev);
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
            // Every sender is gone: the proxy stopped, and what is still open was cut.
            for ev in live.cut() {
                for slot in sinks.iter_mut() {
                    if let Some(Err(e)) = slot.as_mut().map(|s| s.event(&ev)) {
                        fail(slot, e);
                    }
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

/// The connections and UDP flows the dump saw open and not closed, with the bytes it saw each
/// way. A stop drops their tasks before they can say how they ended, so the writer closes
/// them itself at the end (reason `shutdown`): a reader can tell which were live at the stop.
#[derive(Default)]
struct Live(std::collections::HashMap<u64, (Arc<event::ConnInfo>, u64, u64)>);

impl Live {
    fn note(&mut self, ev: &Event) {
        match ev {
            Event::Open { conn, .. } => {
                self.0.insert(conn.id, (conn.clone(), 0, 0));
            }
            Event::Data {
                conn,
                dir,
                offset,
                bytes,
                ..
            } => {
                if let Some((_, up, down)) = self.0.get_mut(&conn.id) {
                    let end = offset + bytes.len() as u64;
                    match dir {
                        event::Direction::ClientToServer => *up = end,
                        event::Direction::ServerToClient => *down = end,
                    }
                }
            }
            Event::Close { conn, .. } => {
                self.0.remove(&conn.id);
            }
            Event::Fin { .. } => {}
        }
    }

    /// A `close` for each one still open, in the order they were numbered.
    fn cut(self) -> Vec<Event> {
        let mut open: Vec<_> = self.0.into_values().collect();
        open.sort_by_key(|(c, _, _)| c.id);
        let ts = event::Timestamp::now();
        open.into_iter()
            .map(|(conn, bytes_c2s, bytes_s2c)| Event::Close {
                conn,
                ts,
                reason: event::CloseReason::Shutdown,
                bytes_c2s,
                bytes_s2c,
            })
            .collect()
    }
}

/// A shared, boxed writer (stdout or a file) that a console sink renders into.
pub type Output = Box<dyn Write + Send>;

/// Bytes a dump holds before it writes them out (at the end of an event).
const WHOLE_EVENTS_AT: usize = 256 * 1024;

/// A dump's write buffer that goes out only at event boundaries, each time in one write_all:
/// another process may append to the same file (docker-proxy mode runs one process per
/// address family, and its dump goes to the shared log file by default), and a buffer written
/// whenever it filled (a BufWriter) tore lines there: one process's `  ` indent, then the
/// other's `< #1 ...` block, on one line.
pub(crate) struct WholeEvents {
    out: Output,
    buf: Vec<u8>,
}

impl WholeEvents {
    /// Buffer for `out`.
    pub(crate) fn new(out: Output) -> Self {
        WholeEvents {
            out,
            buf: Vec::with_capacity(WHOLE_EVENTS_AT),
        }
    }

    /// An event is rendered whole: write the buffer out once it holds enough.
    pub(crate) fn event_done(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= WHOLE_EVENTS_AT {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Emptied whatever happens: a failed destination is stopped, not retried with it.
        let r = self.out.write_all(&self.buf);
        self.buf.clear();
        r
    }
}

impl Write for WholeEvents {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

/// Open a file this process writes (dump, log, pcap) for appending, or emptied (`append`
/// false), without following a symlink at `path` (O_NOFOLLOW: refused), created 0600; an
/// existing file must be a regular file of ours with one link, and is made 0600 before
/// anything is written.
pub fn open_private(path: &std::path::Path, append: bool) -> Result<std::fs::File, TapError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |error| TapError::Open {
        path: path.into(),
        error,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path holds a NUL byte",
        ))
    })?;
    open_checked(libc::AT_FDCWD, &c, append).map_err(err)
}

/// Make `name` inside `dir` as a new file (O_CREAT|O_EXCL, 0600): EEXIST (AlreadyExists) when
/// anything of that name is there, a symlink included. Nothing that exists is opened or
/// changed, and of two processes picking the same name only one gets it.
pub(crate) fn create_new_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in the name"))?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid NUL-terminated name; the returned fd is owned by the File below.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The one place files written as root are opened. Never O_TRUNC: a file is emptied only after
/// it passed the checks (a hard link to someone else's file must not be cut first).
fn open_checked(
    dirfd: libc::c_int,
    name: &std::ffi::CStr,
    append: bool,
) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if append {
        flags |= libc::O_APPEND;
    }
    // SAFETY: a valid NUL-terminated name; the returned fd is owned by the File below.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(std::io::Error::new(
                e.kind(),
                "it is a symbolic link: refusing to write through it (whoever planted it would choose what gets overwritten); remove the link or give another path",
            ));
        }
        return Err(e);
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    check_private(&file)?;
    if !append {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Refuse what must not be written into; make an existing regular file 0600.
fn check_private(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    let md = file.metadata()?;
    let ft = md.file_type();
    // A character device (/dev/null, a terminal) only root can make; it stores nothing.
    if ft.is_char_device() {
        return Ok(());
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != euid {
        return refuse(format!(
            "it already exists and belongs to uid {}, not to this process (uid {euid}): refusing to write into another user's file; remove it or give another path",
            md.uid()
        ));
    }
    if ft.is_fifo() {
        return Ok(());
    }
    if !ft.is_file() {
        return refuse("it is not a regular file: give the path of a file".into());
    }
    if md.nlink() != 1 {
        return refuse(format!(
            "it has {} hard links: writing would change the other names too; remove it or give another path",
            md.nlink()
        ));
    }
    if md.mode() & 0o7777 != 0o600 {
        // SAFETY: fchmod on an fd we own.
        if unsafe { libc::fchmod(file.as_raw_fd(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Make (0700, if missing) and open the directory `path` for [`create_new_at`], refusing a
/// symlink, a directory of another user, or one that group or others may write into (they
/// could plant links named like the files to come).
pub fn open_private_dir(path: &std::path::Path) -> Result<std::os::fd::OwnedFd, TapError> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let err = |error| TapError::Open {
        path: path.into(),
        error,
    };
    let refuse = |why: String| {
        err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    if std::fs::symlink_metadata(path).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(err)?;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path holds a NUL byte",
        ))
    })?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid NUL-terminated path; the fd is owned by the OwnedFd below.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(refuse(
                "it is a symbolic link: refusing to follow it; give the real directory".into(),
            ));
        }
        return Err(err(e));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let dir = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let md = std::fs::File::from(dir.try_clone().map_err(err)?)
        .metadata()
        .map_err(err)?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if md.uid() != euid {
        return Err(refuse(format!(
            "the directory belongs to uid {}, not to this process (uid {euid}): its owner could plant links named like the stream files; use a directory of your own (mode 0700)",
            md.uid()
        )));
    }
    if md.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "the directory is writable by group or others (mode {:04o}): they could plant links named like the stream files; `chmod go-w` it or use a directory of mode 0700",
            md.mode() & 0o7777
        )));
    }
    Ok(dir)
}

/// Shared state for console renderers: one L7 decoder per connection and direction.
pub(crate) struct Decoders {
    on: bool,
    map: std::collections::HashMap<(u64, event::Direction), l7::StreamDecoder>,
    /// Connections whose decoding stopped at a cap (until they close).
    stopped: std::collections::HashSet<u64>,
}

impl Decoders {
    pub(crate) fn new(on: bool) -> Self {
        Decoders {
            on,
            map: Default::default(),
            stopped: Default::default(),
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
                if self.stopped.contains(&conn.id) {
                    return Vec::new();
                }
                let dec = self
                    .map
                    .entry((conn.id, *dir))
                    .or_insert_with(|| l7::StreamDecoder::new(conn, *dir));
                let out = dec.feed(bytes);
                if *dir == event::Direction::ClientToServer {
                    let heads: Vec<bool> = out
                        .iter()
                        .filter_map(|e| match e {
                            l7::L7Event::HttpHead(h) => Some(h.method.as_deref() == Some("HEAD")),
                            _ => None,
                        })
                        .collect();
                    if !heads.is_empty() {
                        self.map
                            .entry((conn.id, event::Direction::ServerToClient))
                            .or_insert_with(|| {
                                l7::StreamDecoder::new(conn, event::Direction::ServerToClient)
                            })
                            .requests_sent(heads);
                    }
                }
                if out.iter().any(|e| matches!(e, l7::L7Event::Stopped(_))) {
                    // Both directions: a peer that reached a cap one way gets no decoder time
                    // (nor memory) the other way either.
                    self.stopped.insert(conn.id);
                    for d in [
                        event::Direction::ClientToServer,
                        event::Direction::ServerToClient,
                    ] {
                        self.map.remove(&(conn.id, d));
                    }
                }
                out
            }
            Event::Close { conn, .. } => {
                self.stopped.remove(&conn.id);
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
/// A unix end is named by its socket file (`unix:/run/docker.sock`), its client by the
/// process that connected (`pid=4242,uid=0,gid=0`), the proxy's own unnamed unix socket `unix`.
pub fn describe_conn(c: &Arc<event::ConnInfo>) -> String {
    let Some(u) = &c.unix else {
        return format!(
            "{} -> {} => {} -> {}",
            c.client, c.listen, c.local, c.backend
        );
    };
    let path = |p: &std::path::Path| format!("unix:{}", p.display());
    let (client, listen) = match &u.listen {
        Some(l) => (
            u.peer
                .as_ref()
                .map_or_else(|| "unix".to_string(), |p| p.to_string()),
            path(l),
        ),
        None => (c.client.to_string(), c.listen.to_string()),
    };
    let (local, backend) = match &u.backend {
        Some(b) => ("unix".to_string(), path(b)),
        None => (c.local.to_string(), c.backend.to_string()),
    };
    format!("{client} -> {listen} => {local} -> {backend}")
}
