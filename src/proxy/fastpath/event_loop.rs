//! One loop thread: its epoll set, the connections it accepted (a slab of slots whose
//! generation makes stale tokens and timers miss), dials and their deadlines, and how a
//! connection ends. [`refused`]: a dial that failed for good, parked while --target-netns is
//! looked up.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockAddr, Type};

use super::super::relay::{is_reset, SMALL};
use super::super::sock;
use super::super::tcp::{canonical, DIAL_TIMEOUT};
use super::super::{Ctx, Level};
use super::pump::{cvt, pump_dir, settle, zero_linger, Dir, End, Ready};
use super::{add_listener, epoll_add, Current, Listener, SPECIAL, STOP, STOP_COUNT};
use refused::{Parked, Refused};

mod refused;

/// How long accepting pauses after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Events taken per epoll_wait.
const EVENTS: usize = 256;

/// One relayed connection: its two sockets, their readiness, and its two directions.
pub(super) struct Conn {
    /// The number the log lines give it.
    pub(super) id: u64,
    /// Index of the listener that accepted it.
    pub(super) listener: u32,
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// The accepted socket.
    pub(super) client: OwnedFd,
    /// The socket to the backend.
    pub(super) backend: OwnedFd,
    /// The backend's dial has not finished yet.
    pub(super) connecting: bool,
    /// The generation of --target-netns's namespace it was dialed in (its low 32 bits).
    pub(super) ns_gen: u32,
    /// Which of the listener's backend addresses is dialled (a target name's, in order; at most
    /// spec::MAX_TARGET_ADDRESSES).
    pub(super) nth: u8,
    /// The client socket's readiness.
    pub(super) c: Ready,
    /// The backend socket's readiness.
    pub(super) b: Ready,
    /// Client to backend.
    pub(super) up: Dir,
    /// Backend to client.
    pub(super) down: Dir,
}

/// A slab entry; `gen` goes up each time it is vacated, so old tokens and timers miss.
pub(super) struct Slot {
    /// Goes up each time the slot is vacated.
    pub(super) gen: u32,
    /// The connection it holds, if any.
    pub(super) conn: Option<Conn>,
}

/// One thread's loop: its epoll set and the connections it accepted.
pub(super) struct Loop {
    ep: OwnedFd,
    listeners: Arc<Vec<Listener>>,
    /// Where [`super::Loops::relisten`] puts the listeners to serve instead.
    current: Current,
    ctx: Arc<Ctx>,
    /// The connections, by the slot index their tokens carry.
    pub(super) slots: Vec<Slot>,
    free: Vec<u32>,
    /// Dial deadlines in order (the timeout is the same for all): (deadline, slot, gen). A
    /// dial that ends leaves its entry behind; [`Loop::expire`] drops those at the front, and
    /// [`Loop::dial_timer`] the rest once they outnumber the dials still waiting.
    pub(super) timers: VecDeque<(Instant, u32, u32)>,
    /// The queue's length at which [`Loop::dial_timer`] drops the entries of ended dials.
    compact_timers_at: usize,
    paused_until: Option<Instant>,
    scratch: Box<[u8]>,
    /// Route lookups for transparent mode's judgement of each client, in this thread's
    /// namespace; opened at the first transparent dial.
    rtnl: Option<crate::netns::links::Rtnl>,
    /// The stop eventfd (shared with [`super::Loops`]), read directly while epoll_wait fails.
    stop: Arc<OwnedFd>,
    /// Writes 1 to `stop` (a wake-up that is no stop): the end of a --target-netns lookup
    /// that refused dials wait for ([`refused`]).
    wake: crate::proxy::target_watch::Wake,
    /// Refused dials waiting for that lookup, in the order they came.
    parked: Vec<Parked>,
    /// The errno of the epoll_wait failure said last (each kind is said once).
    wait_error: Option<i32>,
    /// The generation of --target-netns's namespace this thread is in ([`TargetWatch`]).
    ///
    /// [`TargetWatch`]: crate::proxy::target_watch::TargetWatch
    ns_seen: u64,
}

/// Entries the dial timer queue may hold before it is first compacted.
pub(super) const TIMERS_SLACK: usize = 64;

/// Whether slot `idx` still holds the dial `gen` started (its timer is live).
fn dialing(slots: &[Slot], idx: u32, gen: u32) -> bool {
    let slot = &slots[idx as usize];
    slot.gen == gen && slot.conn.as_ref().is_some_and(|c| c.connecting)
}

/// Take `fd` out of the epoll set `ep` (errors ignored: it is closed or re-added next).
fn epoll_del(ep: RawFd, fd: RawFd) {
    // SAFETY: removing an fd we registered; no event struct needed.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
}

/// The address the client connected to (a wildcard listener's own address for it).
pub(super) fn listen_addr(client: &OwnedFd, l: &Listener) -> SocketAddr {
    socket2::SockRef::from(client)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(canonical)
        .unwrap_or(l.map.listen)
}

/// The epoll token of one side of the connection in slot `idx`, generation `gen`.
pub(super) fn token(idx: u32, gen: u32, backend: bool) -> u64 {
    ((gen as u64) << 32) | ((idx as u64) << 1) | backend as u64
}

/// A slot's next generation. Kept to 31 bits: the token's top bit is [`SPECIAL`], and a slot
/// reused 2^31 times (one thread's sequential connections reuse the same slot: two days at
/// 12 000 a second) would otherwise give tokens that read as a listener's.
pub(super) fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1) & (u32::MAX >> 1)
}

impl Loop {
    /// A loop on the epoll set `ep`, which holds `listeners` and the eventfd `stop` already.
    pub(super) fn new(
        ep: OwnedFd,
        stop: Arc<OwnedFd>,
        listeners: Arc<Vec<Listener>>,
        current: Current,
        ctx: Arc<Ctx>,
    ) -> Loop {
        let ns_seen = ctx.target.as_ref().map_or(0, |w| w.gen());
        // The Arc keeps the eventfd open for a lookup that ends after the loop stopped.
        let fd = stop.clone();
        let wake = Arc::new(move || {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to an eventfd this closure keeps open.
            unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        });
        Loop {
            ep,
            listeners,
            current,
            ctx,
            slots: Vec::new(),
            free: Vec::new(),
            timers: VecDeque::new(),
            compact_timers_at: TIMERS_SLACK,
            paused_until: None,
            scratch: vec![0u8; SMALL].into_boxed_slice(),
            rtnl: None,
            stop,
            wake,
            parked: Vec::new(),
            wait_error: None,
            ns_seen,
        }
    }

    /// Serve until the stop eventfd is written; the connections left are closed then.
    pub(super) fn run(mut self) {
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
                if self.stop_asked() == Some(true) {
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
                    if self.stop_asked() == Some(false) {
                        self.take_new_listeners();
                        continue;
                    }
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
            self.unpark();
        }
    }

    /// What the stop eventfd was written for (a non-blocking read of it): Some(true) to stop,
    /// Some(false) to take the listeners [`super::Loops::relisten`] left (taken here then),
    /// None when it was not written. A stop read before (by a failing epoll_wait's path) is
    /// not read twice: the STOP token then still means stop.
    fn stop_asked(&mut self) -> Option<bool> {
        let mut v: u64 = 0;
        // SAFETY: an 8-byte read from the eventfd into our own u64.
        let r = unsafe {
            libc::read(
                self.stop.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        if r != 8 {
            return None;
        }
        if v >= STOP_COUNT {
            return Some(true);
        }
        self.take_new_listeners();
        Some(false)
    }

    /// Serve the listeners [`super::Loops::relisten`] left, if they are new: the old ones
    /// leave this thread's epoll set (their sockets close when every loop let go of them).
    fn take_new_listeners(&mut self) {
        let new = match self.current.lock() {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        if Arc::ptr_eq(&new, &self.listeners) {
            return;
        }
        for l in self.listeners.iter() {
            if let Some(fd) = &l.fd {
                epoll_del(self.ep.as_raw_fd(), fd.as_raw_fd());
            }
        }
        self.listeners = new;
        if self.paused_until.is_some() {
            // Added back when the pause ends.
            return;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = add_listener(self.ep.as_raw_fd(), l, i) {
                self.ctx.log(
                    Level::Error,
                    format!("tcp {}: cannot accept: epoll: {e}", l.map.listen),
                );
            }
        }
    }

    /// Queue the deadline of the dial `gen` in slot `idx`. Entries of ended dials are dropped
    /// once the queue has doubled since the last time (plus [`TIMERS_SLACK`]): amortized O(1)
    /// per dial, and the queue never holds more than twice the dials waiting at the last
    /// compaction plus the slack. Left alone, one dial that waits its 20 s keeps an entry for
    /// every connection opened behind it (240 000 at 12 000 a second).
    pub(super) fn dial_timer(&mut self, idx: u32, gen: u32) {
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
        let next = [
            self.timers.front().map(|t| t.0),
            self.paused_until,
            self.parked_until(),
        ]
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
        let Some(fd) = &l.fd else {
            return;
        };
        loop {
            // SAFETY: accept4 into the storage try_init hands us; the fd is owned right away.
            let r = unsafe {
                SockAddr::try_init(|storage, len| {
                    cvt(libc::accept4(
                        fd.as_raw_fd(),
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
                        for other in listeners.iter().filter_map(|o| o.fd.as_ref()) {
                            epoll_del(self.ep.as_raw_fd(), other.as_raw_fd());
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
        self.dial(id, li, l, client, peer, true, 0)
    }

    /// Dial the backend for connection `id`: the listener's `nth` backend address (a target
    /// name's next one after a failure); `again`: a dial refused at once in a namespace
    /// --target-netns no longer names is made once more in the one it names now.
    #[allow(clippy::too_many_arguments)]
    fn dial(
        &mut self,
        id: u64,
        li: usize,
        l: &Listener,
        client: OwnedFd,
        peer: SocketAddr,
        again: bool,
        nth: u8,
    ) {
        // In transparent mode bound to the client's address (IP_TRANSPARENT), when its
        // replies can come back here; the first connection of each kind that cannot says why.
        let source = self.ctx.source_for(peer);
        // One atomic load per connection; the thread moves after --target-netns was followed.
        if let Some(w) = &self.ctx.target {
            if w.enter_if_moved(&mut self.ns_seen) {
                self.rtnl = None;
            }
        }
        // A target name's list as it is now (asked again on a thread of its own); one that
        // shrank under a connection between two of its dials goes back to its first address.
        let to = match nth {
            0 if l.map.name.is_none() => l.map.target,
            n => l.map.nth_target(n as usize).unwrap_or(l.map.target),
        };
        // A link-local target's interface, looked up again in a followed namespace.
        let to = self.ctx.rescoped(to);
        let made = sock::make(Type::STREAM, to, source, &mut self.rtnl);
        let connected = made.and_then(|d| {
            if let Some(f) = &d.fallback {
                self.ctx.fallback(id, peer, f);
            }
            let r = match nth {
                0 if l.map.name.is_none() && to == l.map.target => d.socket.connect(&l.target),
                _ => d.socket.connect(&to.into()),
            };
            match r {
                Ok(()) => Ok((d.socket, false)),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((d.socket, true)),
                Err(e) => Err(e),
            }
        });
        let (backend, connecting) = match connected {
            Ok(c) => c,
            Err(error) => {
                // A name's next address first, before the --target-netns recheck (a lookup
                // the refused dial may wait for): the last address's failure makes it, as on
                // tokio's path.
                if l.map.nth_target(nth as usize + 1).is_some() {
                    return self.dial(id, li, l, client, peer, again, nth + 1);
                }
                return self.refused(Refused {
                    id,
                    li,
                    client,
                    peer,
                    error,
                    again,
                    ns_gen: self.ns_seen as u32,
                });
            }
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
            ns_gen: self.ns_seen as u32,
            nth,
            c: Ready::default(),
            b: Ready::default(),
            up: Dir::from_client(),
            down: Dir::from_backend(),
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

    /// Take the connection out of its slot; the slot's stale tokens and timers stop matching.
    pub(super) fn vacate(&mut self, idx: u32) -> Option<Conn> {
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
        let listeners = self.listeners.clone();
        let l = &listeners[conn.listener as usize];
        let moved = (self.ctx.target.as_ref()).is_some_and(|w| w.gen() as u32 != conn.ns_gen);
        // Out of the epoll set (its registration carries the vacated slot's token) until it
        // is dialed again or reset.
        epoll_del(self.ep.as_raw_fd(), conn.client.as_raw_fd());
        let Conn {
            id,
            listener,
            peer,
            client,
            nth,
            backend,
            ns_gen,
            ..
        } = conn;
        // Closed first: in transparent mode the next socket binds the client's port.
        drop(backend);
        if l.map.nth_target(nth as usize + 1).is_some() && !moved {
            // A target name's next address, before the --target-netns recheck (see dial);
            // once the namespace was followed (another dial's recheck) the connection starts
            // again at the first address there ([`Loop::refused`]).
            return self.dial(id, listener as usize, l, client, peer, true, nth + 1);
        }
        self.refused(Refused {
            id,
            li: listener as usize,
            client,
            peer,
            error: e,
            again: true,
            ns_gen,
        });
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
        self.close_parked();
    }
}
