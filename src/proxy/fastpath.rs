//! The plain TCP path's own event loop: no tap, no PROXY header, no per-connection log lines
//! (transparent mode included: its backend sockets come from the same maker). Short connections are mostly kernel work; what the proxy adds on tokio's
//! path (a task per connection, wakers, cross-thread wake-ups, an epoll_ctl DEL per socket
//! before close) is what this loop leaves out.
//!
//! N plain threads, each with its own epoll set holding every listener (EPOLLEXCLUSIVE, so a
//! new connection wakes one thread) and the connections it accepted (edge-triggered), in a
//! slab (no allocation per connection). A thread enters the target namespace once at start
//! and makes backend sockets there itself. Same behaviour as relay.rs: small reads copied
//! through a small buffer, splice through a pipe once a direction turns bulk, half-close passed
//! on, data and FIN in one segment when the FIN is already known, a reset passed on as a reset.
//! TCP urgent data is read in line and passed on as ordinary bytes, and the bytes behind it
//! follow ([`Ready::urgent`], from EPOLLPRI); relay.rs does the same from SIOCATMARK.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockAddr, Type};

use super::relay::{is_reset, pipe_size, Pipe, SMALL};
use super::sock;
use super::spec::PortMap;
use super::tcp::{canonical, DIAL_TIMEOUT};
use super::{Ctx, Level};
use crate::netns::NetNs;

/// Whether the TCP listeners are served by this loop: unless NETTOOL_PROXY_FASTPATH=0 (tokio's
/// path, kept for comparison), when nothing needs the per-connection async machinery.
pub(crate) fn wanted(ctx: &Ctx) -> bool {
    let on = std::env::var("NETTOOL_PROXY_FASTPATH").map_or(true, |v| v != "0");
    on && ctx.tap.is_none() && ctx.proxy_protocol.is_none() && !ctx.log.enabled(Level::Debug)
}

/// How long accepting pauses after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Events taken per epoll_wait.
const EVENTS: usize = 256;
/// Tokens with this bit are not connections: listener i is `SPECIAL | i`.
const SPECIAL: u64 = 1 << 63;
/// The stop eventfd's token.
const STOP: u64 = u64::MAX;

/// The loop threads; [`Loops::stop`] ends them.
pub(crate) struct Loops {
    stops: Vec<OwnedFd>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A listener as the loops see it.
struct Listener {
    fd: std::net::TcpListener,
    map: PortMap,
    target: SockAddr,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn epoll_add(ep: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: epoll_ctl with a valid event struct.
    cvt(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
}

/// A listener in a loop's set: level-triggered, so one accept per event is enough (a backlog
/// left behind is reported again by the next epoll_wait, and no accept4 is spent to be told
/// EAGAIN); EPOLLEXCLUSIVE, so a new connection wakes one idle thread, not all.
fn add_listener(ep: RawFd, l: &Listener, i: usize) -> io::Result<()> {
    epoll_add(
        ep,
        l.fd.as_raw_fd(),
        (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        SPECIAL | i as u64,
    )
}

impl Loops {
    /// Start `threads` loops serving `listeners`; backend sockets are made inside `ns`.
    pub(crate) fn start(
        listeners: Vec<(std::net::TcpListener, PortMap)>,
        ctx: Arc<Ctx>,
        threads: usize,
        ns: Option<NetNs>,
    ) -> io::Result<Loops> {
        let listeners: Arc<Vec<Listener>> = Arc::new(
            listeners
                .into_iter()
                .map(|(fd, map)| {
                    // Inherited by every accepted client: urgent data (telnet's Synch, ftp's
                    // ABOR) is read in line and passed on with the bytes around it, instead of
                    // lost, at no cost per connection.
                    let _ = socket2::SockRef::from(&fd).set_out_of_band_inline(true);
                    Listener {
                        fd,
                        map,
                        target: map.target.into(),
                    }
                })
                .collect(),
        );
        // Filled as threads start: on an error (out of fds for a later thread's epoll set, no
        // thread), dropping it stops and joins the threads started so far, so none is left
        // serving the listeners behind the caller's back.
        let mut loops = Loops {
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for _ in 0..threads.max(1) {
            // SAFETY: plain syscalls; the fds are owned right away.
            let ep =
                unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            let stop = unsafe {
                OwnedFd::from_raw_fd(cvt(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            };
            epoll_add(ep.as_raw_fd(), stop.as_raw_fd(), libc::EPOLLIN as u32, STOP)?;
            for (i, l) in listeners.iter().enumerate() {
                add_listener(ep.as_raw_fd(), l, i)?;
            }
            // The raw stop fd outlives the thread: Loops's drop joins before closing it.
            let lp = Loop::new(ep, stop.as_raw_fd(), listeners.clone(), ctx.clone());
            let ns = ns.clone();
            let log = ctx.clone();
            let h = std::thread::Builder::new()
                .name("nettool-fast".into())
                .spawn(move || match ns {
                    Some(ns) => {
                        if let Err(e) = ns.run(move || lp.run()) {
                            // Unlikely once the dialer entered the same namespace at start.
                            log.log(Level::Error, format!("proxy event loop: {e}"));
                        }
                    }
                    None => lp.run(),
                })?;
            loops.stops.push(stop);
            loops.threads.push(h);
        }
        Ok(loops)
    }

    /// Tell every loop to stop and wait for them; their connections are closed.
    pub(crate) fn stop(self) {
        drop(self)
    }
}

impl Drop for Loops {
    /// A proxy dropped without serving (an error after bind) stops its loops too.
    fn drop(&mut self) {
        for s in &self.stops {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to an eventfd we own.
            unsafe { libc::write(s.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One direction of a connection.
#[derive(Default)]
struct Dir {
    /// Read but not yet written: the destination would block.
    pending: Vec<u8>,
    pending_off: usize,
    /// The FIN follows `pending`.
    fin_pending: bool,
    /// Bulk: the splice pipe, and how many bytes sit in it.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// The FIN was passed on.
    done: bool,
    /// The destination has TCP_NODELAY (the client's is inherited from the listener).
    nodelay: bool,
    /// A write to the destination was made already.
    wrote: bool,
    /// The source keeps urgent data in line (SO_OOBINLINE; the client's is inherited from the
    /// listener).
    inline: bool,
}

impl Dir {
    /// TCP_NODELAY on the destination before any write but a first small one: Nagle never
    /// holds a lone first segment (nothing is in flight; 512 bytes fit the smallest MSS), and
    /// most short connections write once each way, so the setsockopt is paid only by those
    /// that write again, write more or turn bulk.
    fn nodelay_before_write(&mut self, dst: RawFd, len: usize) {
        if !self.nodelay {
            if self.wrote || self.pipe.is_some() || len > 512 {
                let _ = super::sock::set_int_opt(&dst, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
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
    fn urgent_in_line(&mut self, src: RawFd) {
        if !self.inline {
            let _ = super::sock::set_int_opt(&src, libc::SOL_SOCKET, libc::SO_OOBINLINE, 1);
            self.inline = true;
        }
    }
}

/// Readiness of one socket as the edge-triggered events told it (cleared on EAGAIN).
#[derive(Default, Clone, Copy)]
struct Ready {
    read: bool,
    write: bool,
    /// The peer's FIN has arrived (EPOLLRDHUP).
    fin: bool,
    /// EPOLLERR was reported.
    err: bool,
    /// Urgent data (EPOLLPRI) is in the receive queue: reads stop short at its mark and splice
    /// stops before it, so neither a short read nor a splice's EAGAIN or 0 says anything until
    /// a read() has passed it (cleared on EAGAIN).
    urgent: bool,
}

impl Ready {
    fn add(&mut self, ev: u32) {
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

struct Conn {
    id: u64,
    listener: u32,
    peer: SocketAddr,
    client: OwnedFd,
    backend: OwnedFd,
    connecting: bool,
    c: Ready,
    b: Ready,
    up: Dir,
    down: Dir,
}

struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// How a connection ends.
enum End {
    Normal,
    ClientReset,
    BackendReset,
    Error(io::Error),
}

/// What one direction did. Unlike tokio's path (relay.rs's DirEnd, which ends a direction's
/// future), a direction here also stops with nothing to do (`Wait`), and its FIN is passed on
/// by [`settle`], not by the direction itself.
enum Flow {
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

fn zero_linger(fd: &OwnedFd) {
    let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
}

/// Move what can be moved from `src` to `dst` without blocking.
fn pump_dir(
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
fn settle(
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

struct Loop {
    ep: OwnedFd,
    listeners: Arc<Vec<Listener>>,
    ctx: Arc<Ctx>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Dial deadlines in order (the timeout is the same for all): (deadline, slot, gen). A
    /// dial that ends leaves its entry behind; [`Loop::expire`] drops those at the front, and
    /// [`Loop::dial_timer`] the rest once they outnumber the dials still waiting.
    timers: VecDeque<(Instant, u32, u32)>,
    /// The queue's length at which [`Loop::dial_timer`] drops the entries of ended dials.
    compact_timers_at: usize,
    paused_until: Option<Instant>,
    scratch: Box<[u8]>,
    /// Route lookups for transparent mode's judgement of each client, in this thread's
    /// namespace; opened at the first transparent dial.
    rtnl: Option<crate::netns::links::Rtnl>,
    /// The stop eventfd (owned by [`Loops`]), read directly while epoll_wait fails.
    stop: RawFd,
    /// The errno of the epoll_wait failure said last (each kind is said once).
    wait_error: Option<i32>,
}

/// Entries the dial timer queue may hold before it is first compacted.
const TIMERS_SLACK: usize = 64;

/// Whether slot `idx` still holds the dial `gen` started (its timer is live).
fn dialing(slots: &[Slot], idx: u32, gen: u32) -> bool {
    let slot = &slots[idx as usize];
    slot.gen == gen && slot.conn.as_ref().is_some_and(|c| c.connecting)
}

fn token(idx: u32, gen: u32, backend: bool) -> u64 {
    ((gen as u64) << 32) | ((idx as u64) << 1) | backend as u64
}

/// A slot's next generation. Kept to 31 bits: the token's top bit is [`SPECIAL`], and a slot
/// reused 2^31 times (one thread's sequential connections reuse the same slot: two days at
/// 12 000 a second) would otherwise give tokens that read as a listener's.
fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1) & (u32::MAX >> 1)
}

impl Loop {
    fn new(ep: OwnedFd, stop: RawFd, listeners: Arc<Vec<Listener>>, ctx: Arc<Ctx>) -> Loop {
        Loop {
            ep,
            listeners,
            ctx,
            slots: Vec::new(),
            free: Vec::new(),
            timers: VecDeque::new(),
            compact_timers_at: TIMERS_SLACK,
            paused_until: None,
            scratch: vec![0u8; SMALL].into_boxed_slice(),
            rtnl: None,
            stop,
            wait_error: None,
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let timeout = self.timeout_ms();
            // SAFETY: epoll_wait into our own array.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    timeout,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // Not expected (EBADF, EFAULT, EINVAL), and then it fails the same way every
                // time: said once per kind, not at each retry. The STOP token cannot come
                // through a failing epoll_wait, so the eventfd is read here, or stopping the
                // proxy would wait for this thread forever.
                if self.wait_error != e.raw_os_error() {
                    self.wait_error = e.raw_os_error();
                    self.ctx.log(
                        Level::Error,
                        format!(
                            "proxy event loop: epoll_wait: {e}; retrying every {} ms (said once)",
                            ACCEPT_BACKOFF.as_millis()
                        ),
                    );
                }
                if self.stop_asked() {
                    self.close_all();
                    return;
                }
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            self.wait_error = None;
            for ev in &events[..n as usize] {
                let (flags, tok) = (ev.events, ev.u64);
                if tok == STOP {
                    self.close_all();
                    return;
                }
                if tok & SPECIAL != 0 {
                    if self.paused_until.is_none() {
                        self.accept_one((tok & !SPECIAL) as usize);
                    }
                } else {
                    self.conn_event(tok, flags);
                }
            }
            self.expire();
        }
    }

    /// Whether the stop eventfd was written (a non-blocking read of it).
    fn stop_asked(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: an 8-byte read from the eventfd into our own u64.
        let r = unsafe { libc::read(self.stop, &mut v as *mut u64 as *mut libc::c_void, 8) };
        r == 8
    }

    /// Queue the deadline of the dial `gen` in slot `idx`. Entries of ended dials are dropped
    /// once the queue has doubled since the last time (plus [`TIMERS_SLACK`]): amortized O(1)
    /// per dial, and the queue never holds more than twice the dials waiting at the last
    /// compaction plus the slack. Left alone, one dial that waits its 20 s keeps an entry for
    /// every connection opened behind it (240 000 at 12 000 a second).
    fn dial_timer(&mut self, idx: u32, gen: u32) {
        self.timers
            .push_back((Instant::now() + DIAL_TIMEOUT, idx, gen));
        if self.timers.len() > self.compact_timers_at {
            let slots = &self.slots;
            self.timers
                .retain(|&(_, idx, gen)| dialing(slots, idx, gen));
            self.compact_timers_at = 2 * self.timers.len() + TIMERS_SLACK;
        }
    }

    fn timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let next = [self.timers.front().map(|t| t.0), self.paused_until]
            .into_iter()
            .flatten()
            .min();
        match next {
            None => -1,
            Some(t) => {
                let d = t.saturating_duration_since(now);
                (d.as_millis() as i32).saturating_add(1)
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            // Back in the set: a backlog that built up meanwhile is reported at once.
            for (i, l) in self.listeners.iter().enumerate() {
                if let Err(e) = add_listener(self.ep.as_raw_fd(), l, i) {
                    self.ctx.log(
                        Level::Error,
                        format!("tcp {}: cannot accept any more: epoll: {e}", l.map.listen),
                    );
                }
            }
        }
        while let Some(&(t, idx, gen)) = self.timers.front() {
            if !dialing(&self.slots, idx, gen) {
                self.timers.pop_front();
                continue;
            }
            if t > now {
                break;
            }
            self.timers.pop_front();
            let e = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}s", DIAL_TIMEOUT.as_secs()),
            );
            self.dial_failed(idx, e);
        }
    }

    /// Accept one connection (level-triggered: more waiting are reported again).
    fn accept_one(&mut self, li: usize) {
        let listeners = self.listeners.clone();
        let l = &listeners[li];
        loop {
            // SAFETY: accept4 into the storage try_init hands us; the fd is owned right away.
            let r = unsafe {
                SockAddr::try_init(|storage, len| {
                    cvt(libc::accept4(
                        l.fd.as_raw_fd(),
                        storage.cast(),
                        len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    ))
                    .map(|fd| OwnedFd::from_raw_fd(fd))
                })
            };
            match r {
                Ok((client, addr)) => {
                    let peer = addr
                        .as_socket()
                        .map(canonical)
                        .unwrap_or(SocketAddr::new(l.map.listen.ip(), 0));
                    return self.open(li, l, client, peer);
                }
                Err(e) => match e.raw_os_error() {
                    // Another thread took it.
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => {}
                    _ => {
                        self.ctx
                            .log(Level::Warn, format!("accept on tcp {}: {e}", l.map.listen));
                        // Out of fds or memory: level-triggered, the listener would be
                        // reported again at once, so it leaves the set for the backoff.
                        for other in listeners.iter() {
                            // SAFETY: removing an fd we registered; no event struct needed.
                            unsafe {
                                libc::epoll_ctl(
                                    self.ep.as_raw_fd(),
                                    libc::EPOLL_CTL_DEL,
                                    other.fd.as_raw_fd(),
                                    std::ptr::null_mut(),
                                )
                            };
                        }
                        self.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                },
            }
        }
    }

    fn open(&mut self, li: usize, l: &Listener, client: OwnedFd, peer: SocketAddr) {
        let c = &self.ctx.counters;
        c.connections.fetch_add(1, Ordering::Relaxed);
        c.active.fetch_add(1, Ordering::Relaxed);
        let id = self.ctx.next_id();
        // In transparent mode bound to the client's address (IP_TRANSPARENT), when its
        // replies can come back here; the first connection of each kind that cannot says why.
        let source = self.ctx.source_for(peer);
        let backend = match sock::make(Type::STREAM, l.map.target, source, &mut self.rtnl) {
            Ok(d) => {
                if let Some(f) = &d.fallback {
                    self.ctx.fallback(id, peer, f);
                }
                d.socket
            }
            Err(e) => return self.dial_error(id, li, &client, peer, e),
        };
        let connecting = match backend.connect(&l.target) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return self.dial_error(id, li, &client, peer, e),
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.slots[idx as usize].gen;
        let conn = Conn {
            id,
            listener: li as u32,
            peer,
            client,
            backend: OwnedFd::from(backend),
            connecting,
            c: Ready::default(),
            b: Ready::default(),
            up: Dir {
                inline: true,
                ..Dir::default()
            },
            down: Dir {
                nodelay: true,
                ..Dir::default()
            },
        };
        // EPOLLPRI: urgent data changes what a short read or splice's EAGAIN means (Ready).
        let ev =
            (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET)
                as u32;
        let ep = self.ep.as_raw_fd();
        let added = epoll_add(ep, conn.client.as_raw_fd(), ev, token(idx, gen, false))
            .and_then(|_| epoll_add(ep, conn.backend.as_raw_fd(), ev, token(idx, gen, true)));
        self.slots[idx as usize].conn = Some(conn);
        if let Err(e) = added {
            // Out of memory or over max_user_watches.
            return self.finish(
                idx,
                End::Error(io::Error::new(e.kind(), format!("epoll: {e}"))),
            );
        }
        if connecting {
            self.dial_timer(idx, gen);
        }
    }

    /// A backend dial failed before the connection had a slot: reset the client, say why.
    fn dial_error(&self, id: u64, li: usize, client: &OwnedFd, peer: SocketAddr, e: io::Error) {
        let map = self.listeners[li].map;
        let listen = socket2::SockRef::from(client)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(canonical)
            .unwrap_or(map.listen);
        let c = &self.ctx.counters;
        c.dial_errors.fetch_add(1, Ordering::Relaxed);
        self.ctx.log(
            Level::Warn,
            format!(
                "#{id} {peer} -> {listen}: cannot connect to backend {}: {e}; resetting the client",
                map.target
            ),
        );
        zero_linger(client);
        c.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Take the connection out of its slot; the slot's stale tokens and timers stop matching.
    fn vacate(&mut self, idx: u32) -> Option<Conn> {
        let slot = &mut self.slots[idx as usize];
        let conn = slot.conn.take()?;
        slot.gen = next_gen(slot.gen);
        self.free.push(idx);
        Some(conn)
    }

    fn dial_failed(&mut self, idx: u32, e: io::Error) {
        let Some(conn) = self.vacate(idx) else {
            return;
        };
        self.dial_error(conn.id, conn.listener as usize, &conn.client, conn.peer, e);
        // Dropping conn closes both sockets (the client's with a reset).
    }

    fn conn_event(&mut self, tok: u64, flags: u32) {
        let idx = ((tok & 0xffff_ffff) >> 1) as u32;
        let gen = (tok >> 32) as u32;
        let backend = tok & 1 == 1;
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        if slot.gen != gen {
            return;
        }
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        if flags as i32 & libc::EPOLLPRI != 0 {
            // Before any read reaches the urgent byte: kept in the stream instead of skipped.
            let (fd, d) = match backend {
                true => (&conn.backend, &mut conn.down),
                false => (&conn.client, &mut conn.up),
            };
            d.urgent_in_line(fd.as_raw_fd());
        }
        if backend {
            if conn.connecting {
                let f = flags as i32;
                if f & (libc::EPOLLERR | libc::EPOLLHUP) != 0 {
                    let e = socket2::SockRef::from(&conn.backend)
                        .take_error()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| {
                            io::Error::other("the backend closed the connection at once")
                        });
                    return self.dial_failed(idx, e);
                }
                if f & libc::EPOLLOUT == 0 {
                    conn.b.add(flags);
                    return;
                }
                conn.connecting = false;
            }
            conn.b.add(flags);
        } else {
            conn.c.add(flags);
            if conn.connecting {
                return;
            }
        }
        if let Some(end) = self.pump(idx) {
            self.finish(idx, end);
        }
    }

    /// Relay what can be relayed; Some when the connection is over.
    fn pump(&mut self, idx: u32) -> Option<End> {
        let conn = self.slots[idx as usize].conn.as_mut()?;
        let counters = &self.ctx.counters;
        let (cfd, bfd) = (conn.client.as_raw_fd(), conn.backend.as_raw_fd());
        if !conn.up.done {
            let flow = pump_dir(
                &mut conn.up,
                cfd,
                &mut conn.c,
                bfd,
                &mut conn.b,
                &mut self.scratch,
                &counters.bytes_c2s,
            );
            if let Some(end) = settle(flow, &mut conn.up, conn.down.done, &conn.backend, true) {
                return Some(end);
            }
        }
        if !conn.down.done {
            let flow = pump_dir(
                &mut conn.down,
                bfd,
                &mut conn.b,
                cfd,
                &mut conn.c,
                &mut self.scratch,
                &counters.bytes_s2c,
            );
            if let Some(end) = settle(flow, &mut conn.down, conn.up.done, &conn.client, false) {
                return Some(end);
            }
        }
        // A side whose own direction has ended can still reset: nothing reads it any more,
        // so EPOLLERR is the only word of it.
        let reset = |fd: &OwnedFd| {
            socket2::SockRef::from(fd)
                .take_error()
                .ok()
                .flatten()
                .is_some_and(|e| is_reset(&e))
        };
        if conn.up.done && conn.c.err && reset(&conn.client) {
            return Some(End::ClientReset);
        }
        if conn.down.done && conn.b.err && reset(&conn.backend) {
            return Some(End::BackendReset);
        }
        None
    }

    fn finish(&mut self, idx: u32, end: End) {
        let Some(conn) = self.vacate(idx) else {
            return;
        };
        let c = &self.ctx.counters;
        match end {
            End::Normal => {}
            End::ClientReset => {
                zero_linger(&conn.backend);
                c.resets.fetch_add(1, Ordering::Relaxed);
            }
            End::BackendReset => {
                zero_linger(&conn.client);
                c.resets.fetch_add(1, Ordering::Relaxed);
            }
            End::Error(e) => {
                zero_linger(&conn.client);
                zero_linger(&conn.backend);
                c.errors.fetch_add(1, Ordering::Relaxed);
                self.ctx.log(
                    Level::Warn,
                    format!("#{} error: {e}; both sides reset", conn.id),
                );
            }
        }
        c.active.fetch_sub(1, Ordering::Relaxed);
        // Dropping conn closes both sockets, which also takes them out of the epoll set.
    }

    fn close_all(&mut self) {
        let c = &self.ctx.counters;
        for s in &mut self.slots {
            if s.conn.take().is_some() {
                c.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A context whose log lines are kept in `lines`.
    fn ctx(lines: Arc<Mutex<Vec<String>>>) -> Arc<Ctx> {
        Arc::new(Ctx {
            next_id: AtomicU64::new(0),
            counters: Default::default(),
            dialer: super::super::sock::Dialer::new(None).unwrap(),
            tap: None,
            log: super::super::Log::new(Level::Debug, move |_, l| {
                lines.lock().unwrap().push(l.to_string())
            }),
            udp_idle: Duration::from_secs(30),
            transparent: false,
            proxy_protocol: None,
            fallback_said: Default::default(),
        })
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: a new fd, owned right away.
        unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)) }
    }

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    /// A later thread that cannot start (here: no fd left for its epoll set) leaves none of
    /// the earlier ones running: they are stopped and joined before the error is returned.
    /// Before, the first thread kept serving the listener while the caller gave up. The fd
    /// limit is the process's, so the case runs in a child process of this test binary.
    #[test]
    fn a_loop_thread_that_cannot_start_leaves_none_of_the_others_running() {
        const CHILD: &str = "NETTOOL_TEST_LOOPS_START_CHILD";
        let name = "proxy::fastpath::tests::a_loop_thread_that_cannot_start_leaves_none_of_the_others_running";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.contains("1 passed"),
                "the child:\n{text}"
            );
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let map = PortMap {
            proto: super::super::Proto::Tcp,
            listen: addr,
            optional: false,
            target: addr,
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let ctx = ctx(lines.clone());
        // Room for exactly two more descriptors: the first thread's epoll set and stop eventfd.
        // SAFETY: F_GETFD only asks whether a descriptor number is open.
        let free: Vec<i32> = (0..)
            .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1)
            .take(2)
            .collect();
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with valid structs, in this child process only.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
            let low = libc::rlimit {
                rlim_cur: free[1] as libc::rlim_t + 1,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
        }
        let started = Loops::start(vec![(l, map)], ctx, 3, None);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
        let e = started
            .err()
            .expect("the second thread had no fd for its epoll set");
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
        // Joined already; the task entry goes a moment after the thread's last instruction.
        let t = Instant::now();
        while threads_named("nettool-fast") > 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(threads_named("nettool-fast"), 0, "left running");
    }

    /// An epoll_wait that keeps failing is said once, not every 100 ms, and the loop still
    /// stops when asked (the STOP token cannot come through a failing epoll_wait). The "epoll
    /// set" is an eventfd: epoll_wait fails with EINVAL every time. The retries are counted
    /// from the thread's voluntary context switches (one per 100 ms sleep), not from a clock.
    #[test]
    fn an_epoll_wait_that_keeps_failing_is_said_once_and_the_loop_still_stops() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = eventfd();
        let lp = Loop::new(
            eventfd(),
            stop.as_raw_fd(),
            Arc::new(Vec::new()),
            ctx(lines.clone()),
        );
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: gettid has no failure mode.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            lp.run();
            let _ = done_tx.send(());
        });
        let tid = tid_rx.recv().unwrap();
        let switches = || {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let t = Instant::now();
        while switches() < 10 && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(switches() >= 10, "the loop thread did not retry");
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe {
            libc::write(
                stop.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the loop did not stop while epoll_wait failed");
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("proxy event loop: epoll_wait: Invalid argument")
                && lines[0].ends_with("retrying every 100 ms (said once)"),
            "{}",
            lines[0]
        );
    }

    /// Entries of dials that ended do not pile up behind one that waits: 10 000 connections
    /// dialled and answered behind a dial that waits its 20 s leave the queue at its bound
    /// (twice the dials waiting, plus the slack), with the waiting dial's entry first.
    #[test]
    fn ended_dials_timers_do_not_pile_up_behind_one_that_waits() {
        let mut lp = Loop::new(eventfd(), -1, Arc::new(Vec::new()), ctx(Default::default()));
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let conn = |id| Conn {
            id,
            listener: 0,
            peer: "127.0.0.1:1".parse().unwrap(),
            client: fd(),
            backend: fd(),
            connecting: true,
            c: Ready::default(),
            b: Ready::default(),
            up: Dir::default(),
            down: Dir::default(),
        };
        lp.slots.push(Slot {
            gen: 0,
            conn: Some(conn(0)),
        });
        lp.dial_timer(0, 0);
        lp.slots.push(Slot { gen: 0, conn: None });
        let mut longest = 0;
        for id in 1..=10_000 {
            let gen = lp.slots[1].gen;
            lp.slots[1].conn = Some(conn(id));
            lp.dial_timer(1, gen);
            longest = longest.max(lp.timers.len());
            // Answered, then over: the slot moves on to its next generation.
            lp.vacate(1);
        }
        assert!(
            longest <= 2 * 2 + TIMERS_SLACK + 1,
            "the queue held {longest} entries"
        );
        assert_eq!(lp.timers.front().map(|t| (t.1, t.2)), Some((0, 0)));
    }

    /// Every generation a slot goes through gives connection tokens, never a listener's or the
    /// stop token: with the generation wrapping at 2^32, the 2^31st reuse of a slot set the
    /// SPECIAL bit and the loop thread indexed the listeners with it (a panic).
    #[test]
    fn a_slot_reused_past_two_to_the_31_still_gives_connection_tokens() {
        let mut gen = (1u32 << 31) - 3;
        for _ in 0..6 {
            for (idx, backend) in [(0, false), (0, true), ((1 << 31) - 1, true)] {
                let tok = token(idx, gen, backend);
                assert_eq!(tok & SPECIAL, 0, "gen {gen:#x} idx {idx}: {tok:#x}");
                assert_ne!(tok, STOP);
            }
            gen = next_gen(gen);
        }
        assert_eq!(gen, 3, "wraps to 0 after 2^31 - 1");
    }
}
