//! Moving bytes between the two sockets of a TCP connection.
//!
//! Fast path: splice(2) socket -> pipe -> socket, the bytes never enter user space. Tapped
//! path: read into a buffer that is handed (not copied) to the tap and then written out.
//! Both pass a half-close on (shutdown(SHUT_WR)) and a reset on as a reset (SO_LINGER 0), and
//! TCP urgent data on as an ordinary byte with every byte behind it ([`Source`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::{Ctx, Level};
use crate::tap::event::{CloseReason, ConnInfo, Direction, Event, Timestamp};
use crate::tap::{payload, Tap};

/// Pipe size asked for on the splice path; NETTOOL_PROXY_PIPE_KB overrides (for benchmarks).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The pipe size the splice path asks for (NETTOOL_PROXY_PIPE_KB or 1 MiB).
pub(crate) fn pipe_size() -> libc::c_int {
    static SIZE: std::sync::OnceLock<libc::c_int> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("NETTOOL_PROXY_PIPE_KB")
            .ok()
            .and_then(|v| v.parse::<libc::c_int>().ok())
            .filter(|kb| (4..=1 << 20).contains(kb))
            .map(|kb| kb * 1024)
            .unwrap_or(PIPE_SIZE)
    })
}

/// How a direction ended the connection. A direction whose FIN is passed on first does not
/// end (it watches its source for a reset, [`pass_fin`]), so every end is the connection's.
#[derive(Debug)]
enum DirEnd {
    /// The source sent FIN and it was passed on after the other direction's: both are done.
    LastFinPassed,
    /// Reading the source failed with a reset.
    SrcReset,
    /// Writing the destination failed: it reset or went away.
    DstReset,
    /// Another error.
    Error(io::Error),
}

/// Whether an error means the peer reset or went away (passed on as a reset).
pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNRESET)
            | Some(libc::EPIPE)
            | Some(libc::ECONNABORTED)
            | Some(libc::ETIMEDOUT)
    )
}

fn shutdown_write(s: &TcpStream) {
    // Errors (already reset) do not matter here.
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// A non-blocking pipe for splice, at [`pipe_size`] when the system allows it.
pub(crate) struct Pipe {
    /// The read end.
    pub(crate) r: OwnedFd,
    /// The write end.
    pub(crate) w: OwnedFd,
}

impl Pipe {
    /// A new pipe (fails on EMFILE/ENFILE/ENOMEM).
    pub(crate) fn new() -> io::Result<Pipe> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        // SAFETY: fcntl on a pipe fd we own; failure (over pipe-max-size) keeps the default size.
        unsafe {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, pipe_size());
        }
        Ok(Pipe { r, w })
    }
}

/// How a failed read ends a direction.
fn src_end(e: io::Error) -> DirEnd {
    if is_reset(&e) {
        DirEnd::SrcReset
    } else {
        DirEnd::Error(e)
    }
}

/// How a failed write ends a direction.
fn dst_end(e: io::Error) -> DirEnd {
    if is_reset(&e) {
        DirEnd::DstReset
    } else {
        DirEnd::Error(e)
    }
}

/// Run a non-blocking `op` on `s` each time it is ready for `interest`, until it does not
/// would-block (tokio clears the readiness on WouldBlock, so this never spins).
async fn when_ready<R>(
    s: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Whether `s`'s next byte is TCP urgent data (SIOCATMARK). A read stops short at the urgent
/// mark and splice stops before it (EAGAIN, or 0 with the FIN in), so there neither a short
/// read nor splice's EAGAIN or 0 means what it usually does. At the mark the byte is kept in
/// the stream (SO_OOBINLINE: the next read returns it and what follows, as the event loop
/// does) instead of skipped.
fn at_urgent_mark(s: &TcpStream) -> bool {
    /// <linux/sockios.h>; the libc crate does not export it.
    const SIOCATMARK: libc::c_ulong = 0x8905;
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int into `at`.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), SIOCATMARK, &mut at) };
    if r == 0 && at != 0 {
        let _ = socket2::SockRef::from(s).set_out_of_band_inline(true);
        return true;
    }
    false
}

/// Reads one direction's source. Through AsyncRead, not readable() + try_read: tokio then
/// treats a short read as "drained" (edge-triggered epoll) and waits for the next event
/// instead of probing with a read that fails EAGAIN, one syscall fewer per exchange. Short
/// at an urgent mark, the bytes behind it are already queued and no event will say so:
/// they are read straight from the socket, past tokio's readiness, until it would block.
/// A full read can end exactly at a mark too, and SIOCATMARK is not asked after one (a bulk
/// transfer would pay it on every read): SO_OOBINLINE is set once instead, so the read that
/// meets the mark returns the urgent byte rather than skipping it.
struct Source<'a> {
    half: ReadHalf<'a>,
    /// Bytes past an urgent mark may be queued: read without waiting for an event.
    past_mark: bool,
    /// SO_OOBINLINE was set after a full read.
    inline: bool,
}

impl<'a> Source<'a> {
    fn new(half: ReadHalf<'a>) -> Self {
        Source {
            half,
            past_mark: false,
            inline: false,
        }
    }

    /// Read once (0: the FIN).
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, DirEnd> {
        if self.past_mark {
            // SAFETY: recv into our own buffer; the socket is non-blocking.
            let r = unsafe {
                libc::recv(
                    self.half.as_ref().as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            match r {
                n if n >= 0 => {
                    let n = n as usize;
                    self.past_mark =
                        n == buf.len() || (n > 0 && at_urgent_mark(self.half.as_ref()));
                    return Ok(n);
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(src_end(e));
                    }
                    // Drained: tokio's readiness is clear already, the next arrival wakes us.
                    self.past_mark = false;
                }
            }
        }
        let n = self.half.read(buf).await.map_err(src_end)?;
        if n > 0 && n < buf.len() {
            self.past_mark = at_urgent_mark(self.half.as_ref());
        } else if n > 0 && !self.inline {
            // One setsockopt for a direction that turns bulk; none for a short exchange.
            let _ = socket2::SockRef::from(self.half.as_ref()).set_out_of_band_inline(true);
            self.inline = true;
        }
        Ok(n)
    }

    /// The socket.
    fn stream(&self) -> &TcpStream {
        self.half.as_ref()
    }
}

/// Whether the peer's FIN has already been seen on `s` (epoll reported RDHUP), without waiting:
/// the bytes just read are then the last ones. Not when an error came with the hang-up: a
/// reset is passed on as a reset (the next read says so), not as a FIN.
fn fin_already_here(s: &TcpStream) -> bool {
    use std::future::Future;
    let ready = s.ready(Interest::READABLE | Interest::ERROR);
    let mut ready = std::pin::pin!(ready);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(
        ready.as_mut().poll(&mut cx),
        std::task::Poll::Ready(Ok(r)) if r.is_read_closed() && !r.is_error()
    )
}

/// Write all of `data` with MSG_MORE: the kernel holds it until the FIN that follows (shutdown
/// or close tacks the FIN onto the queued segment).
async fn write_corked(dst: &TcpStream, data: &[u8]) -> Result<(), DirEnd> {
    let sock = socket2::SockRef::from(dst);
    let mut done = 0;
    while done < data.len() {
        let left = &data[done..];
        done += when_ready(dst, Interest::WRITABLE, || {
            sock.send_with_flags(left, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        })
        .await
        .map_err(dst_end)?;
    }
    Ok(())
}

/// Pass `src`'s FIN on to `dst`. The second FIN ends the connection: the relay closes both
/// sockets right away and close() sends it (both receive queues are drained, so it is a FIN,
/// not a reset): one syscall fewer than a shutdown. The first is a shutdown of `dst`'s write
/// side, and then `src` can still reset while the other direction runs; no read will say so
/// (its FIN was read), only the socket's error (EPOLLERR). Watching for that passes the reset
/// on at once, as the event loop does, instead of at the next write to `src`, which an idle
/// peer may never cause: the other side would wait on a connection that is gone.
async fn pass_fin(src: &TcpStream, dst: &TcpStream, ended: &AtomicBool) -> DirEnd {
    if ended.swap(true, Ordering::Relaxed) {
        return DirEnd::LastFinPassed;
    }
    shutdown_write(dst);
    // tokio never clears ERROR readiness, so a later error or one the other direction's write
    // took already (take_error says None) leaves nothing to wait for but the other direction.
    if src.ready(Interest::ERROR).await.is_ok_and(|r| r.is_error()) {
        if let Ok(Some(e)) = src.take_error() {
            if is_reset(&e) {
                return DirEnd::SrcReset;
            }
        }
    }
    std::future::pending().await
}

/// Bytes read through a small buffer before a direction switches to splice: short exchanges
/// (request/response, health checks) never pay for a pipe.
pub(crate) const SMALL: usize = 8 * 1024;

/// Where a direction counts the bytes it passed on: its connection's total and the proxy's
/// counter for that direction.
#[derive(Clone, Copy)]
struct Count<'a> {
    conn: &'a AtomicU64,
    proxy: &'a AtomicU64,
}

impl Count<'_> {
    fn add(self, n: usize) {
        self.conn.fetch_add(n as u64, Ordering::Relaxed);
        self.proxy.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Write all of `data` to `dst` and count it.
async fn write_counted(
    dst: &mut WriteHalf<'_>,
    data: &[u8],
    count: Count<'_>,
) -> Result<(), DirEnd> {
    dst.write_all(data).await.map_err(dst_end)?;
    count.add(data.len());
    Ok(())
}

/// A direction's end once its mover returned: Ok means the source's FIN was read with every
/// byte before it passed on, and the FIN is passed on now. The mover's buffer and pipe went
/// with its frame, so a direction that waits here (the other one may run on for long) holds
/// its two sockets only.
async fn end_dir(
    moved: Result<(), DirEnd>,
    src: &Source<'_>,
    dst: &WriteHalf<'_>,
    ended: &AtomicBool,
) -> DirEnd {
    match moved {
        Ok(()) => pass_fin(src.stream(), dst.as_ref(), ended).await,
        Err(end) => end,
    }
}

/// tokio's untapped path for one direction: copy, then splice once it turns bulk.
async fn splice_dir(
    mut src: Source<'_>,
    mut dst: WriteHalf<'_>,
    count: Count<'_>,
    ended: &AtomicBool,
) -> DirEnd {
    let moved = splice_bytes(&mut src, &mut dst, count).await;
    end_dir(moved, &src, &dst, ended).await
}

/// Move `src`'s bytes to `dst` until its FIN (Ok).
async fn splice_bytes(
    src: &mut Source<'_>,
    dst: &mut WriteHalf<'_>,
    count: Count<'_>,
) -> Result<(), DirEnd> {
    // Copy while reads come back smaller than the buffer; a full read means bulk: splice.
    let mut small = [0u8; SMALL];
    loop {
        let n = src.read_some(&mut small).await?;
        if n == 0 {
            return Ok(());
        }
        // The source's FIN came with this data (a server that answers and closes). A short
        // read drained the receive queue up to that FIN, so these bytes are the last ones
        // (not when it stopped at an urgent mark: more is queued behind it).
        let last = n < SMALL && !src.past_mark && fin_already_here(src.stream());
        if last {
            // Corked, so the FIN passed on next leaves in the same segment: one packet less.
            // No read just to be told 0: the FIN is passed on now.
            write_corked(dst.as_ref(), &small[..n]).await?;
            count.add(n);
            return Ok(());
        }
        write_counted(dst, &small[..n], count).await?;
        if n == SMALL {
            break;
        }
    }
    let pipe = match Pipe::new() {
        Ok(p) => p,
        // No fds for a pipe (EMFILE/ENFILE) or no memory for one: this connection is
        // copied through user space instead. Resetting it would lose a live transfer for
        // want of two descriptors.
        Err(_) => return copy_plain(src, dst, count).await,
    };
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let s = src.stream();
        let spliced = when_ready(s, Interest::READABLE, || {
            match splice(
                s.as_fd(),
                None,
                pipe.w.as_fd(),
                None,
                pipe_size() as usize,
                flags,
            ) {
                // splice stops at an urgent mark, with EAGAIN (or 0 once the FIN is in):
                // the bytes from the mark on are read below.
                Err(nix::errno::Errno::EAGAIN) | Ok(0) if at_urgent_mark(s) => Ok(None),
                r => r.map(Some).map_err(io::Error::from),
            }
        })
        .await
        .map_err(src_end)?;
        let Some(n) = spliced else {
            src.past_mark = true;
            let n = src.read_some(&mut small).await?;
            if n == 0 {
                return Ok(());
            }
            write_counted(dst, &small[..n], count).await?;
            continue;
        };
        if n == 0 {
            return Ok(());
        }
        let dst: &TcpStream = dst.as_ref();
        let mut left = n;
        while left > 0 {
            let m = when_ready(dst, Interest::WRITABLE, || {
                splice(pipe.r.as_fd(), None, dst.as_fd(), None, left, flags)
                    .map_err(io::Error::from)
            })
            .await
            .map_err(dst_end)?;
            left -= m;
            count.add(m);
        }
    }
}

/// The splice path's fallback when no pipe can be made: a plain read/write copy until the FIN.
async fn copy_plain(
    src: &mut Source<'_>,
    dst: &mut WriteHalf<'_>,
    count: Count<'_>,
) -> Result<(), DirEnd> {
    let mut buf = vec![0u8; payload::CHUNK];
    loop {
        let n = src.read_some(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        write_counted(dst, &buf[..n], count).await?;
    }
}

/// The tapped path for one direction: every read handed to the tap, then written out.
async fn copy_dir(
    mut src: Source<'_>,
    mut dst: WriteHalf<'_>,
    count: Count<'_>,
    ended: &AtomicBool,
    tap: &Tap,
    conn: &Arc<ConnInfo>,
    dir: Direction,
) -> DirEnd {
    let moved = copy_tapped(&mut src, &mut dst, count, tap, conn, dir).await;
    end_dir(moved, &src, &dst, ended).await
}

/// Move `src`'s bytes to `dst` through the tap until its FIN (Ok; the tap is told).
async fn copy_tapped(
    src: &mut Source<'_>,
    dst: &mut WriteHalf<'_>,
    count: Count<'_>,
    tap: &Tap,
    conn: &Arc<ConnInfo>,
    dir: Direction,
) -> Result<(), DirEnd> {
    let mut offset = 0u64;
    let mut buf = payload::take();
    loop {
        let n = src.read_some(&mut buf).await?;
        let ts = Timestamp::now();
        if n == 0 {
            if !tap.is_closed() {
                tap.send(Event::Fin {
                    conn: conn.clone(),
                    dir,
                    ts,
                })
                .await;
            }
            return Ok(());
        }
        // A bulk read is handed over with its buffer; a small one is copied out at its size.
        let data = if n >= payload::HAND_OVER {
            let mut full = std::mem::replace(&mut buf, payload::take());
            full.truncate(n);
            Arc::new(full)
        } else {
            Arc::new(buf[..n].to_vec())
        };
        if !tap.is_closed() {
            // Queue before writing so the dump shows a request before its response.
            tap.send(Event::Data {
                conn: conn.clone(),
                dir,
                offset,
                ts,
                bytes: data.clone(),
            })
            .await;
        }
        let written = write_counted(dst, &data, count).await;
        payload::recycle(data);
        written?;
        offset += n as u64;
    }
}

/// Drive both directions until one ends the connection (the last FIN, a reset, an error); says
/// why.
async fn drive(
    f1: impl std::future::Future<Output = DirEnd>,
    f2: impl std::future::Future<Output = DirEnd>,
) -> CloseReason {
    let (which, end) = tokio::select! {
        e = f1 => (Direction::ClientToServer, e),
        e = f2 => (Direction::ServerToClient, e),
    };
    match (which, end) {
        (_, DirEnd::LastFinPassed) => CloseReason::Normal,
        (Direction::ClientToServer, DirEnd::SrcReset)
        | (Direction::ServerToClient, DirEnd::DstReset) => CloseReason::ClientReset,
        (Direction::ServerToClient, DirEnd::SrcReset)
        | (Direction::ClientToServer, DirEnd::DstReset) => CloseReason::BackendReset,
        (_, DirEnd::Error(e)) => CloseReason::Error(e.to_string()),
    }
}

/// Count how a connection ended (a reset passed on, an error logged) and say which sides
/// get a reset in turn: (client, backend).
pub(crate) fn resets_after(reason: &CloseReason, ctx: &Ctx, id: u64) -> (bool, bool) {
    let c = &ctx.counters;
    match reason {
        CloseReason::ClientReset => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            (false, true)
        }
        CloseReason::BackendReset => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            (true, false)
        }
        CloseReason::Error(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            ctx.log(Level::Warn, format!("#{id} error: {e}; both sides reset"));
            (true, true)
        }
        _ => (false, false),
    }
}

/// Relay until both directions end or one side resets; returns why and the byte counts.
pub(crate) async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    conn: &Arc<ConnInfo>,
    ctx: &Ctx,
) -> (CloseReason, u64, u64) {
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let ended = AtomicBool::new(false);
    let c = &ctx.counters;
    let (client_r, client_w) = client.split();
    let (backend_r, backend_w) = backend.split();
    let up_count = Count {
        conn: &up,
        proxy: &c.bytes_c2s,
    };
    let down_count = Count {
        conn: &down,
        proxy: &c.bytes_s2c,
    };
    // Each path's two futures live on this task's own frame: no allocation per connection.
    let reason = match &ctx.tap {
        Some(tap) => {
            drive(
                copy_dir(
                    Source::new(client_r),
                    backend_w,
                    up_count,
                    &ended,
                    tap,
                    conn,
                    Direction::ClientToServer,
                ),
                copy_dir(
                    Source::new(backend_r),
                    client_w,
                    down_count,
                    &ended,
                    tap,
                    conn,
                    Direction::ServerToClient,
                ),
            )
            .await
        }
        None => {
            drive(
                splice_dir(Source::new(client_r), backend_w, up_count, &ended),
                splice_dir(Source::new(backend_r), client_w, down_count, &ended),
            )
            .await
        }
    };
    let (reset_client, reset_backend) = resets_after(&reason, ctx, conn.id);
    if reset_client {
        let _ = client.set_zero_linger();
    }
    if reset_backend {
        let _ = backend.set_zero_linger();
    }
    (
        reason,
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
    )
}
