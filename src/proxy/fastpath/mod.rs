//! The plain TCP path's own event loop: no tap, no PROXY header, no per-connection log lines
//! (transparent mode included: its backend sockets come from the same maker). Short
//! connections are mostly kernel work; what the proxy adds on tokio's path (a task per
//! connection, wakers, cross-thread wake-ups, an epoll_ctl DEL per socket before close) is
//! what this loop leaves out.
//!
//! N plain threads, each with its own epoll set holding every listener (EPOLLEXCLUSIVE, so a
//! new connection wakes one thread) and the connections it accepted (edge-triggered), in a
//! slab (no allocation per connection). A thread enters the target namespace at start and
//! makes backend sockets there itself (again when --target-netns was followed to a new one:
//! [`super::target_watch::TargetWatch`]). Same behaviour as relay.rs: small reads copied
//! through a small buffer, splice through a pipe once a direction turns bulk, half-close passed
//! on, data and FIN in one segment when the FIN is already known, a reset passed on as a reset.
//! TCP urgent data is read in line and passed on as ordinary bytes, and the bytes behind it
//! follow ([`pump::Ready`], from EPOLLPRI); relay.rs does the same from SIOCATMARK.
//!
//! Here: the threads (start, stop) and the listeners' registration. [`event_loop`]: one
//! thread's loop (accept, dial, timers, events, ending a connection). [`pump`]: moving one
//! direction's bytes and passing its FIN or reset on, with the syscalls it makes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use socket2::SockAddr;

use super::spec::PortMap;
use super::{Ctx, Level};
use crate::netns::NetNs;
use event_loop::Loop;
use pump::cvt;

mod event_loop;
mod pump;
#[cfg(test)]
mod tests;

/// Whether the TCP listeners are served by this loop: unless NETTOOL_PROXY_FASTPATH=0 (tokio's
/// path, kept for comparison), when nothing needs the per-connection async machinery.
pub(crate) fn wanted(ctx: &Ctx) -> bool {
    let on = std::env::var("NETTOOL_PROXY_FASTPATH").map_or(true, |v| v != "0");
    on && ctx.tap.is_none() && ctx.proxy_protocol.is_none() && !ctx.log.enabled(Level::Debug)
}

/// Tokens with this bit are not connections: listener i is `SPECIAL | i`.
const SPECIAL: u64 = 1 << 63;
/// The stop eventfd's token.
const STOP: u64 = u64::MAX;
/// What [`Loops`]'s drop adds to each stop eventfd; a smaller count there says the listeners
/// were replaced ([`Loops::relisten`]) or a --target-netns lookup that refused dials wait for
/// ended: one eventfd per thread for all, so a loop costs no more descriptors than before.
const STOP_COUNT: u64 = 1 << 32;

/// The listeners every loop serves: swapped whole when --listen-netns is followed.
type Current = Arc<std::sync::Mutex<Arc<Vec<Listener>>>>;

/// The loop threads; [`Loops::stop`] ends them.
pub(crate) struct Loops {
    stops: Vec<Arc<OwnedFd>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The listeners the loops take at their next wake-up by a stop eventfd.
    current: Current,
}

/// A listener as the loops see it: its map keeps its index for good (connections name their
/// listener by it); the socket is replaced when --listen-netns names a new namespace, and is
/// None when an optional address (an "every address" mapping's other family) is not there.
struct Listener {
    fd: Option<std::net::TcpListener>,
    map: PortMap,
    target: SockAddr,
}

impl Listener {
    fn new(fd: Option<std::net::TcpListener>, map: PortMap) -> Listener {
        if let Some(fd) = &fd {
            // Inherited by every accepted client: urgent data (telnet's Synch, ftp's ABOR) is
            // read in line and passed on with the bytes around it, instead of lost, at no cost
            // per connection.
            let _ = socket2::SockRef::from(fd).set_out_of_band_inline(true);
        }
        Listener {
            fd,
            target: map.target.into(),
            map,
        }
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
    let Some(fd) = &l.fd else {
        return Ok(());
    };
    epoll_add(
        ep,
        fd.as_raw_fd(),
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
                .map(|(fd, map)| Listener::new(Some(fd), map))
                .collect(),
        );
        let current: Current = Arc::new(std::sync::Mutex::new(listeners.clone()));
        // Filled as threads start: on an error (out of fds for a later thread's epoll set, no
        // thread), dropping it stops and joins the threads started so far, so none is left
        // serving the listeners behind the caller's back.
        let mut loops = Loops {
            stops: Vec::new(),
            threads: Vec::new(),
            current: current.clone(),
        };
        for _ in 0..threads.max(1) {
            // SAFETY: plain syscalls; the fds are owned right away.
            let ep =
                unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            let stop = Arc::new(unsafe {
                OwnedFd::from_raw_fd(cvt(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            });
            epoll_add(ep.as_raw_fd(), stop.as_raw_fd(), libc::EPOLLIN as u32, STOP)?;
            for (i, l) in listeners.iter().enumerate() {
                add_listener(ep.as_raw_fd(), l, i)?;
            }
            let lp = Loop::new(
                ep,
                stop.clone(),
                listeners.clone(),
                current.clone(),
                ctx.clone(),
            );
            let ns = ns.clone();
            let log = ctx.clone();
            let h = std::thread::Builder::new()
                .name("nettool-fast".into())
                .spawn(move || {
                    // This thread is the loop's own: it enters the namespace itself (NetNs::run
                    // would start a second thread to hold it, and name it netns-INODE).
                    if let Some(ns) = ns {
                        if let Err(e) = ns.enter_this_thread() {
                            // Unlikely once the dialer entered the same namespace at start.
                            log.log(Level::Error, format!("proxy event loop: {e}"));
                            return;
                        }
                    }
                    lp.run()
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

    /// Serve `new` (bound in the namespace --listen-netns names now) instead of the listeners
    /// of the same address: each loop swaps them at its next wake-up, and the old sockets close
    /// once the last loop let go of them. Connections open stay as they are. A listener with no
    /// new socket of its address is closed too (an optional address the namespace lacks).
    pub(crate) fn relisten(&self, new: Vec<(std::net::TcpListener, PortMap)>) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let mut new: Vec<Option<(std::net::TcpListener, PortMap)>> =
            new.into_iter().map(Some).collect();
        let next: Vec<Listener> = cur
            .iter()
            .map(|old| {
                let fd = new
                    .iter_mut()
                    // By address and port: a link-local address's interface index is the new
                    // namespace's.
                    .find(|n| {
                        n.as_ref().is_some_and(|(_, m)| {
                            m.listen.ip() == old.map.listen.ip()
                                && m.listen.port() == old.map.listen.port()
                        })
                    })
                    .and_then(|n| n.take())
                    .map(|(fd, _)| fd);
                Listener::new(fd, old.map.clone())
            })
            .collect();
        *cur = Arc::new(next);
        drop(cur);
        for s in &self.stops {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to an eventfd we own.
            unsafe { libc::write(s.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }
}

impl Drop for Loops {
    /// A proxy dropped without serving (an error after bind) stops its loops too.
    fn drop(&mut self) {
        for s in &self.stops {
            // SAFETY: an 8-byte write to an eventfd we own.
            unsafe {
                libc::write(
                    s.as_raw_fd(),
                    &STOP_COUNT as *const u64 as *const libc::c_void,
                    8,
                )
            };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
