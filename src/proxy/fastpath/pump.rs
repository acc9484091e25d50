//! One direction of a connection: moving its bytes without blocking (copy, then splice once
//! it turns bulk), and what its end means for the connection (FIN passed on, reset, error).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::super::relay::{is_reset, pipe_size, Pipe};
use super::super::sock;

/// A C call's result as io::Result: a negative return is the errno.
pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// [`cvt`] for calls that return a byte count.
fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One direction of a connection.
#[derive(Default)]
pub(super) struct Dir {
    /// Read but not yet written: the destination would block.
    pending: Vec<u8>,
    pending_off: usize,
    /// The FIN follows `pending`.
    fin_pending: bool,
    /// Bulk: the splice pipe, and how many bytes sit in it.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// The FIN was passed on.
    pub(super) done: bool,
    /// The destination has TCP_NODELAY (the client's is inherited from the listener).
    nodelay: bool,
    /// A write to the destination was made already.
    wrote: bool,
    /// The source keeps urgent data in line (SO_OOBINLINE; the client's is inherited from the
    /// listener).
    inline: bool,
}

impl Dir {
    /// The client's direction: the client socket keeps urgent data in line already (inherited
    /// from the listener).
    pub(super) fn from_client() -> Dir {
        Dir {
            inline: true,
            ..Dir::default()
        }
    }

    /// The backend's direction: its destination, the client, has TCP_NODELAY already
    /// (inherited from the listener).
    pub(super) fn from_backend() -> Dir {
        Dir {
            nodelay: true,
            ..Dir::default()
        }
    }

    /// TCP_NODELAY on the destination before any write but a first small one: Nagle never
    /// holds a lone first segment (nothing is in flight; 512 bytes fit the smallest MSS), and
    /// most short connections write once each way, so the setsockopt is paid only by those
    /// that write again, write more or turn bulk.
    fn nodelay_before_write(&mut self, dst: RawFd, len: usize) {
        if !self.nodelay {
            if self.wrote || self.pipe.is_some() || len > 512 {
                let _ = sock::set_int_opt(&dst, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
                self.nodelay = true;
            }
            self.wrote = true;
        }
    }

    /// SO_OOBINLINE on the source, once: at an urgent mark the next read returns the urgent
    /// byte instead of skipping it. Set when EPOLLPRI shows, and after a full read: that read
    /// may end exactly at a mark no EPOLLPRI has announced yet (the urgent byte came after the
    /// event that woke the loop), and if the FIN came with it, splice says 0 there and the read
    /// that tells it from the FIN would skip the byte. Paid by a backend's direction that turns
    /// bulk, never by a short connection.
    pub(super) fn urgent_in_line(&mut self, src: RawFd) {
        if !self.inline {
            let _ = sock::set_int_opt(&src, libc::SOL_SOCKET, libc::SO_OOBINLINE, 1);
            self.inline = true;
        }
    }
}

/// Readiness of one socket as the edge-triggered events told it (cleared on EAGAIN).
#[derive(Default, Clone, Copy)]
pub(super) struct Ready {
    read: bool,
    write: bool,
    /// The peer's FIN has arrived (EPOLLRDHUP).
    fin: bool,
    /// EPOLLERR was reported.
    pub(super) err: bool,
    /// Urgent data (EPOLLPRI) is in the receive queue: reads stop short at its mark and splice
    /// stops before it, so neither a short read nor a splice's EAGAIN or 0 says anything until
    /// a read() has passed it (cleared on EAGAIN).
    urgent: bool,
}

impl Ready {
    /// Take in the events epoll reported for the socket.
    pub(super) fn add(&mut self, ev: u32) {
        let ev = ev as i32;
        if ev & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            self.read = true;
        }
        if ev & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            self.write = true;
        }
        if ev & (libc::EPOLLRDHUP | libc::EPOLLHUP) != 0 {
            self.fin = true;
        }
        if ev & libc::EPOLLERR != 0 {
            self.err = true;
        }
        if ev & libc::EPOLLPRI != 0 {
            self.read = true;
            self.urgent = true;
        }
    }
}

/// How a connection ends.
pub(super) enum End {
    Normal,
    ClientReset,
    BackendReset,
    Error(io::Error),
}

/// What one direction did. Unlike tokio's path (relay.rs's DirEnd, which ends a direction's
/// future), a direction here also stops with nothing to do (`Wait`), and its FIN is passed on
/// by [`settle`], not by the direction itself.
pub(super) enum Flow {
    /// Nothing more to do until an event.
    Wait,
    /// The source sent FIN; [`settle`] passes it on (or closes).
    FinToPass,
    /// Reading the source failed with a reset.
    SrcReset,
    /// Writing the destination failed: it reset or went away.
    DstReset,
    /// Another error.
    Error(io::Error),
}

/// How a failed read ends a direction (relay.rs's `src_end`, for this loop's [`Flow`]).
fn src_flow(e: io::Error) -> Flow {
    if is_reset(&e) {
        Flow::SrcReset
    } else {
        Flow::Error(e)
    }
}

/// How a failed write ends a direction (relay.rs's `dst_end`, for this loop's [`Flow`]).
fn dst_flow(e: io::Error) -> Flow {
    if is_reset(&e) {
        Flow::DstReset
    } else {
        Flow::Error(e)
    }
}

fn would_block(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

fn send(fd: RawFd, data: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: send from a live buffer.
    cvt_size(unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), flags) })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between fds we own, no offsets.
    cvt_size(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// Make close() send a reset instead of a FIN.
pub(super) fn zero_linger(fd: &OwnedFd) {
    let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
}

/// Move what can be moved from `src` to `dst` without blocking.
pub(super) fn pump_dir(
    d: &mut Dir,
    src: RawFd,
    sr: &mut Ready,
    dst: RawFd,
    dw: &mut Ready,
    scratch: &mut [u8],
    counter: &AtomicU64,
) -> Flow {
    loop {
        if d.in_pipe > 0 {
            if !dw.write {
                return Flow::Wait;
            }
            let Some(pipe) = &d.pipe else {
                return Flow::Wait;
            };
            let r = pipe.r.as_raw_fd();
            d.nodelay_before_write(dst, d.in_pipe);
            match splice(r, dst, d.in_pipe) {
                Ok(m) => {
                    d.in_pipe -= m;
                    counter.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => {
                    dw.write = false;
                    return Flow::Wait;
                }
                Err(e) => return dst_flow(e),
            }
            continue;
        }
        if d.pending_off < d.pending.len() {
            if !dw.write {
                return Flow::Wait;
            }
            d.nodelay_before_write(dst, d.pending.len() - d.pending_off);
            match send(dst, &d.pending[d.pending_off..], d.fin_pending) {
                Ok(m) => {
                    d.pending_off += m;
                    counter.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => {
                    dw.write = false;
                    return Flow::Wait;
                }
                Err(e) => return dst_flow(e),
            }
            if d.pending_off == d.pending.len() {
                d.pending.clear();
                d.pending_off = 0;
                if d.fin_pending {
                    return Flow::FinToPass;
                }
            }
            continue;
        }
        if !sr.read {
            return Flow::Wait;
        }
        // Urgent data in the way: splice would not pass it, read() does (below).
        if let Some(pipe) = d.pipe.as_ref().filter(|_| !sr.urgent) {
            match splice(src, pipe.w.as_raw_fd(), pipe_size() as usize) {
                Ok(n) if n > 0 => {
                    d.in_pipe = n;
                    continue;
                }
                // The FIN, or urgent data that arrived (with the FIN after it) since the last
                // event: splice stops at the urgent mark as at the end. The read() below tells
                // them apart, once per bulk connection.
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    sr.read = false;
                    return Flow::Wait;
                }
                Err(e) => return src_flow(e),
            }
        }
        // SAFETY: read into our own buffer.
        let n = match cvt_size(unsafe {
            libc::read(
                src,
                scratch.as_mut_ptr() as *mut libc::c_void,
                scratch.len(),
            )
        }) {
            Ok(0) => return Flow::FinToPass,
            Ok(n) => n,
            Err(e) if would_block(&e) => {
                sr.read = false;
                sr.urgent = false;
                return Flow::Wait;
            }
            Err(e) => return src_flow(e),
        };
        if n == scratch.len() {
            d.urgent_in_line(src);
        }
        // A short read drained the receive queue (the next arrival is a new edge). With the
        // FIN already seen, these bytes are the last: sent corked so the FIN passed on next
        // leaves in the same segment, and no read just to be told 0. Not so at an urgent mark:
        // the read stopped there with the rest of the queue (and the FIN) behind it. Nor after
        // EPOLLERR: the hang-up may be a reset (the next read says), which is passed on as a
        // reset, not as a FIN that would make what the peer aborted look complete.
        let drained = n < scratch.len() && !sr.urgent;
        let last = drained && sr.fin && !sr.err;
        if drained && !sr.fin {
            sr.read = false;
        }
        let wrote = if dw.write {
            d.nodelay_before_write(dst, n);
            match send(dst, &scratch[..n], last) {
                Ok(m) => m,
                Err(e) if would_block(&e) => {
                    dw.write = false;
                    0
                }
                Err(e) => return dst_flow(e),
            }
        } else {
            0
        };
        counter.fetch_add(wrote as u64, Ordering::Relaxed);
        if wrote < n {
            // Rare (the destination's buffer is full): kept until EPOLLOUT.
            d.pending.extend_from_slice(&scratch[wrote..n]);
            d.fin_pending = last;
            continue;
        }
        if last {
            return Flow::FinToPass;
        }
        if n == scratch.len() && d.pipe.is_none() {
            // A full read means bulk: splice from now on. No pipe (out of fds or memory):
            // keep copying rather than reset a live transfer.
            d.pipe = Pipe::new().ok();
        }
    }
}

/// What one direction's flow means for the connection (None: it goes on). A FIN is passed on
/// to `dst` with shutdown(SHUT_WR), unless the other direction has ended too: then the
/// connection is over and close() sends the FIN (both receive queues are drained).
/// `from_client`: the direction reads the client, so a reset at its source is the client's.
pub(super) fn settle(
    flow: Flow,
    d: &mut Dir,
    other_done: bool,
    dst: &OwnedFd,
    from_client: bool,
) -> Option<End> {
    let (src_reset, dst_reset) = if from_client {
        (End::ClientReset, End::BackendReset)
    } else {
        (End::BackendReset, End::ClientReset)
    };
    match flow {
        Flow::Wait => None,
        Flow::FinToPass => {
            d.done = true;
            if other_done {
                return Some(End::Normal);
            }
            // Empty now (a FIN is read only once the pipe is drained): given back, as the
            // other direction may run on for long.
            d.pipe = None;
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            None
        }
        Flow::SrcReset => Some(src_reset),
        Flow::DstReset => Some(dst_reset),
        Flow::Error(e) => Some(End::Error(e)),
    }
}
