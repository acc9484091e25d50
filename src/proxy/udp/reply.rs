//! A UDP flow's reply side: the task that waits on a flow's backend socket, moves its
//! replies to the client (batched, or one datagram at a time), tells the backend's errors,
//! follows a refusal to --target-netns, and closes the flow once idle.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::pace::{moved, pace_after_full};
use super::pktinfo;
use super::recv::{RecvBatch, BATCH_BUF};
use super::send::send_with_fallback;
use super::{Flow, Flows, BATCH, MAX_DATAGRAM};
use crate::proxy::{Ctx, Level};
use crate::tap::event::{CloseReason, Direction, Event, Timestamp};

thread_local! {
    /// The buffer flows read replies into (one per thread, not one per flow).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// Hand memory freed by expired flows back to the system: glibc keeps freed small blocks in
/// its arenas otherwise, so the process stayed at its peak after every flow had expired.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether replies are moved in batches (recvmmsg from the backend, sendmmsg to the client):
/// unless a dump needs each datagram on its own.
pub(super) fn batched_replies(ctx: &Ctx) -> bool {
    ctx.tap.is_none()
}

/// Whether a send's errno says the backend cannot be reached from here (refused, no route):
/// what a namespace --target-netns no longer names gives.
pub(super) fn unreachable(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::ENETUNREACH | libc::EHOSTUNREACH
    )
}

/// Whether a backend socket's errno is about datagrams, not the socket: what the kernel makes
/// of an ICMP error its path sent back (icmp_err_convert, icmpv6_err_convert), or a send
/// refused on the way out (a firewall's drop: EPERM; no buffer: ENOBUFS). The socket still
/// works: the flow goes on. Anything else (EBADF, ENOMEM, ...) ends the flow.
fn datagram_error(errno: i32) -> bool {
    unreachable(errno)
        || matches!(
            errno,
            libc::EMSGSIZE
                | libc::ENOPROTOOPT
                | libc::EACCES
                | libc::EPERM
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::EPROTO
                | libc::ENOBUFS
        )
}

/// What a receive from a backend socket that failed with `e` means for its flow.
pub(super) fn got_error(e: io::Error) -> Got {
    match e.raw_os_error() {
        _ if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
        Some(errno) if unreachable(errno) => Got::Refused(errno),
        Some(errno) if datagram_error(errno) => Got::Other(errno),
        _ => Got::Failed(e),
    }
}

/// The pending error of a backend socket (SO_ERROR, which clears it), and tokio's error
/// readiness cleared with it: left set, every later wait would return at once.
fn take_socket_error(sock: &UdpSocket) -> Option<i32> {
    let mut errno = None;
    // try_io clears the readiness it was given when the closure says WouldBlock.
    let _ = sock.try_io(Interest::ERROR, || {
        errno = sock
            .take_error()
            .ok()
            .flatten()
            .and_then(|e| e.raw_os_error());
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
    errno
}

/// What one wake-up of a flow's reply task got from its backend socket.
pub(super) enum Got {
    /// Nothing (yet), or an error that leaves the flow open.
    Nothing,
    /// ICMP port unreachable from an earlier datagram (the backend may come back), or a send
    /// that found no route: the errno.
    Refused(i32),
    /// Another error about an earlier datagram (see [`datagram_error`]): the errno. Said once
    /// per flow; the flow goes on.
    Other(i32),
    /// The socket failed: the flow ends.
    Failed(io::Error),
    /// Datagrams, each on its own (the tapped path, or what the client's socket had no room for).
    Datagrams(Vec<Vec<u8>>),
}

/// Batched replies: recvmmsg what the backend sent, sendmmsg it to the client from the
/// listening socket (equal-size runs as UDP_SEGMENT messages). What did not fit is copied out.
fn reply_batch(
    flow: &Flow,
    sock: &UdpSocket,
    to: &socket2::SockAddr,
    ctx: &Ctx,
    epoch: Instant,
) -> Got {
    let from = reply_source(flow.reply_from);
    BATCH_BUF.with(|cell| {
        let mut cell = cell.borrow_mut();
        let b = cell.get_or_insert_with(RecvBatch::new);
        let n = match b.recv_drained(&flow.backend, flow.backend.as_raw_fd()) {
            Ok(n) => n,
            Err(e) => return got_error(e),
        };
        let run: Vec<&[u8]> = (0..n).flat_map(|i| b.datagrams(i)).collect();
        moved(run.len());
        let sent = match sock.try_io(Interest::WRITABLE, || {
            send_with_fallback(sock.as_raw_fd(), &run, Some(to), from, &flow.reply_gso)
        }) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                // Like a failed send_to(): these replies are lost, the flow goes on.
                ctx.debug(|| format!("#{} udp reply to {}: {e}", flow.conn.id, flow.conn.client));
                run.len()
            }
        };
        let ok = sent.min(run.len());
        let bytes: u64 = run[..ok].iter().map(|d| d.len() as u64).sum();
        flow.last
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        flow.count(ctx, Direction::ServerToClient, bytes, ok);
        // A full batch leaves more queued, so the thread does not park (where it paces).
        if n == BATCH {
            pace_after_full(flow.backend.as_raw_fd());
        }
        if sent >= run.len() {
            Got::Nothing
        } else {
            Got::Datagrams(run[sent..].iter().map(|d| d.to_vec()).collect())
        }
    })
}

/// Where replies leave from: the client's destination address, unless it was one a socket
/// cannot send from (multicast, broadcast).
pub(super) fn reply_source(from: Option<IpAddr>) -> Option<IpAddr> {
    from.filter(|ip| !ip.is_multicast() && *ip != IpAddr::V4(Ipv4Addr::BROADCAST))
}

/// One reply to the client, waiting for room; dumped first when there is a tap.
async fn reply_one(
    flow: &Flow,
    sock: &UdpSocket,
    peer: SocketAddr,
    ctx: &Ctx,
    epoch: Instant,
    buf: Vec<u8>,
) {
    let n = buf.len();
    flow.last
        .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    let buf = Arc::new(buf);
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Data {
            conn: flow.conn.clone(),
            dir: Direction::ServerToClient,
            offset: flow.down.load(Ordering::Relaxed),
            ts: Timestamp::now(),
            bytes: buf.clone(),
        })
        .await;
    }
    match pktinfo::send_to(sock, &buf, peer, flow.reply_from).await {
        Ok(_) => flow.count(ctx, Direction::ServerToClient, n as u64, 1),
        Err(e) => ctx.debug(|| format!("#{} udp reply to {peer}: {e}", flow.conn.id)),
    }
}

/// A UDP flow counted in `active` / `active_udp`, taken off when dropped.
struct FlowOpen<'a>(&'a Ctx);
impl Drop for FlowOpen<'_> {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.0.counters.active_udp.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A flow's reply task: replies to the client until the flow is idle for --udp-timeout
/// (or refused in a namespace --target-netns no longer names), then the flow's close.
pub(super) async fn replies(
    flow: Arc<Flow>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    flows: Flows,
    ctx: Arc<Ctx>,
    epoch: Instant,
) {
    // Counted open until this task ends, idle or dropped with the runtime at a stop (the
    // counters at exit then count the flow as ended, as a TCP connection's are).
    let _open = FlowOpen(&ctx);
    let idle = ctx.udp_idle.as_millis() as u64;
    let batched = batched_replies(&ctx);
    let to = socket2::SockAddr::from(peer);
    // Whether this flow said why its backend refuses (once: a refusal comes per datagram;
    // until then each asks, and the watch resolves at most once a second).
    let mut refusal_said = false;
    loop {
        let now = epoch.elapsed().as_millis() as u64;
        let since = now.saturating_sub(flow.last.load(Ordering::Relaxed));
        if since >= idle {
            break;
        }
        let wait = Duration::from_millis(idle - since);
        // Wait without a buffer: a flow holds none while it waits (a 64 KiB one per flow made
        // thousands of flows cost ~58 KB each); datagrams are read into the thread's buffers
        // and copied out only when they cannot leave at once.
        // A socket error (an ICMP error for an earlier datagram) wakes no reader: a flow's
        // next send would take it (and lose that datagram), but a client that sends one
        // datagram per flow (a resolver takes a new source port per query) never sends one,
        // so the error wakes the flow: a refusal to follow --target-netns, any other error to
        // be said. The poke only matters with --target-netns (a Notified per wait costs a lock).
        let woken = async {
            if ctx.target.is_none() {
                let r = flow
                    .backend
                    .ready(Interest::READABLE | Interest::ERROR)
                    .await;
                return Some(r.map(|r| r.is_error()));
            }
            tokio::select! {
                r = flow.backend.ready(Interest::READABLE | Interest::ERROR) => {
                    Some(r.map(|r| r.is_error()))
                }
                _ = flow.poke.notified() => None,
            }
        };
        let got = match tokio::time::timeout(wait, woken).await {
            Err(_) => continue,
            Ok(None) => match flow.failed.swap(0, Ordering::Relaxed) {
                0 => Got::Nothing,
                errno => Got::Refused(errno),
            },
            Ok(Some(Err(e))) => Got::Failed(e),
            Ok(Some(Ok(true))) => match take_socket_error(&flow.backend) {
                Some(errno) if unreachable(errno) => Got::Refused(errno),
                Some(errno) => Got::Other(errno),
                None => Got::Nothing,
            },
            Ok(Some(Ok(false))) if batched => reply_batch(&flow, &sock, &to, &ctx, epoch),
            Ok(Some(Ok(false))) => match SCRATCH.with(|b| {
                let mut b = b.borrow_mut();
                flow.backend.try_recv(&mut b).map(|n| b[..n].to_vec())
            }) {
                Ok(d) => Got::Datagrams(vec![d]),
                Err(e) => got_error(e),
            },
        };
        let datagrams = match got {
            Got::Nothing => continue,
            Got::Refused(errno) => match &ctx.target {
                Some(w) => {
                    if !refusal_said {
                        let hint = ctx.target_hint_async().await;
                        if !hint.is_empty() {
                            refusal_said = true;
                            let c = &flow.conn;
                            ctx.log(
                                Level::Warn,
                                format!(
                                    "#{} udp {} -> {}: datagrams to backend {}: {}{hint}",
                                    c.id,
                                    c.client,
                                    c.listen,
                                    c.backend,
                                    io::Error::from_raw_os_error(errno)
                                ),
                            );
                        }
                    }
                    if w.gen() != flow.ns_gen {
                        break;
                    }
                    continue;
                }
                None => continue,
            },
            Got::Other(errno) => {
                flow.say_error(&ctx, &io::Error::from_raw_os_error(errno));
                continue;
            }
            Got::Failed(e) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                let c = &flow.conn;
                ctx.log(
                    Level::Warn,
                    format!(
                        "#{} udp {} -> {}: receive from backend {}: {e}; the flow ends",
                        c.id, c.client, c.listen, c.backend
                    ),
                );
                break;
            }
            Got::Datagrams(d) => d,
        };
        for buf in datagrams {
            reply_one(&flow, &sock, peer, &ctx, epoch, buf).await;
        }
    }
    let shrunk = flows.lock().is_ok_and(|mut m| {
        m.remove(&peer);
        // Give the table's room back once most flows are gone (halving at most each time).
        if m.capacity() > 64 && m.len() < m.capacity() / 4 {
            let keep = m.len() * 2;
            m.shrink_to(keep);
            true
        } else {
            false
        }
    });
    if shrunk {
        release_freed_memory();
    }
    ctx.debug(|| format!("#{} udp flow idle, closed", flow.conn.id));
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Close {
            conn: flow.conn.clone(),
            ts: Timestamp::now(),
            reason: CloseReason::Normal,
            bytes_c2s: flow.up.load(Ordering::Relaxed),
            bytes_s2c: flow.down.load(Ordering::Relaxed),
        })
        .await;
    }
}
