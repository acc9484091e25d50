//! UDP: one flow per client address, each with its own backend socket (made in the target
//! namespace); replies leave from the address the client sent to; idle flows expire.
//!
//! Here: the flow table, the listeners' receive loops (batched, or one datagram at a time
//! when a dump or a PROXY header needs each on its own), a flow's opening; [`reply`]: a
//! flow's replies, its backend's errors and its expiry. The system calls below them: [`recv`] (recvmmsg batches, GRO), [`send`] (sendmmsg
//! batches, UDP_SEGMENT), [`pktinfo`] (one datagram with its IP_PKTINFO address); [`mod@pace`]:
//! the UDP thread's pacing and the sockets' receive buffers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use socket2::Type;
use tokio::net::UdpSocket;

use super::spec::PortMap;
use super::tcp::canonical;
use super::{Ctx, Level, Proto};
use crate::tap::event::{ConnInfo, Direction, Event, Timestamp};
use pace::{moved, pace_after_full, say_if_capped, BACKEND_RCVBUF};
pub(crate) use pace::{pace, size_rcvbuf, LISTEN_RCVBUF};
use recv::{enable_gro, RecvBatch, BATCH_BUF};
use reply::{batched_replies, replies, unreachable};
use send::send_with_fallback;

mod pace;
mod pktinfo;
mod recv;
mod reply;
mod send;
#[cfg(test)]
mod tests;
pub(crate) mod thread;

/// Largest datagram (64 KiB).
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams taken per recvmmsg / given per sendmmsg on the fast path.
const BATCH: usize = 32;

/// Control room per message: IPV6_PKTINFO (the larger pktinfo) and UDP_SEGMENT.
const CTRL_WORDS: usize = 10;

struct Flow {
    backend: UdpSocket,
    /// The PROXY protocol header put in front of every datagram to the backend.
    header: Option<Vec<u8>>,
    conn: Arc<ConnInfo>,
    /// Where replies must come from (the client's destination address), when listening on a wildcard.
    reply_from: Option<IpAddr>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// Whether sends to the backend may use UDP_SEGMENT (off once the path refused it).
    gso: std::sync::atomic::AtomicBool,
    /// The same for replies to the client.
    reply_gso: std::sync::atomic::AtomicBool,
    /// The generation of --target-netns's namespace when the flow was dialed (at most the one
    /// its socket is in): a refused flow of an older one ends, and the client's next datagram
    /// opens a flow in the namespace followed now.
    ns_gen: u64,
    /// The errno of a send to the backend that was refused (port unreachable) or found no
    /// route (0: none): its reply task asks why.
    failed: std::sync::atomic::AtomicI32,
    /// Wakes the reply task for `failed` (a refusal wakes no reader: the socket error is
    /// taken by the next send).
    poke: tokio::sync::Notify,
    /// Whether an error of its backend socket other than "unreachable" was said (once per
    /// flow: such an error can come with every datagram).
    error_said: std::sync::atomic::AtomicBool,
}

impl Flow {
    /// A send to the backend failed with `e`: a refusal with --target-netns given is for the
    /// reply task to look into (the namespace may have been replaced); any other error is
    /// said (once per flow). Whether it was said.
    fn sent_error(&self, ctx: &Ctx, e: &io::Error) -> bool {
        let Some(errno) = e.raw_os_error().filter(|n| unreachable(*n)) else {
            return self.say_error(ctx, e);
        };
        if ctx.target.is_some() {
            self.failed.store(errno, Ordering::Relaxed);
            self.poke.notify_one();
        }
        false
    }

    /// Count an error of the backend socket other than "unreachable", and say the first of
    /// the flow (later ones with -v): the datagram it is about is lost, the flow goes on. EMSGSIZE
    /// after a path MTU change, EACCES or ENOPROTOOPT from a firewall's reject, EPERM from a
    /// drop on the way out: the next datagram may pass (a smaller one, a rule removed), and a
    /// new flow would meet the same path. Whether it was said.
    fn say_error(&self, ctx: &Ctx, e: &io::Error) -> bool {
        let c = &self.conn;
        ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
        if self.error_said.swap(true, Ordering::Relaxed) {
            ctx.debug(|| format!("#{} udp datagrams to backend {}: {e}", c.id, c.backend));
            return false;
        }
        ctx.log(
            Level::Warn,
            format!(
                "#{} udp {} -> {}: datagrams to backend {}: {e}; the flow goes on (its later errors are counted in errors=, each logged with -v)",
                c.id, c.client, c.listen, c.backend
            ),
        );
        true
    }

    /// Count `datagrams` datagrams, `bytes` in all, passed on in direction `dir`: the flow's
    /// own total (for its dump's offsets and close line) and the proxy's counters.
    fn count(&self, ctx: &Ctx, dir: Direction, bytes: u64, datagrams: usize) {
        let (flow, proxy) = match dir {
            Direction::ClientToServer => (&self.up, &ctx.counters.bytes_c2s),
            Direction::ServerToClient => (&self.down, &ctx.counters.bytes_s2c),
        };
        flow.fetch_add(bytes, Ordering::Relaxed);
        proxy.fetch_add(bytes, Ordering::Relaxed);
        ctx.counters
            .datagrams
            .fetch_add(datagrams as u64, Ordering::Relaxed);
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// One listening socket and its flows.
struct Listener {
    sock: Arc<UdpSocket>,
    map: PortMap,
    ctx: Arc<Ctx>,
    flows: Flows,
    epoch: Instant,
}

/// Receive forever on one listening socket.
pub(crate) async fn serve(sock: UdpSocket, map: PortMap, ctx: Arc<Ctx>) {
    let pktinfo = map.listen.ip().is_unspecified();
    say_if_capped(&ctx);
    let l = Listener {
        sock: Arc::new(sock),
        map,
        ctx,
        flows: Arc::new(Mutex::new(HashMap::new())),
        epoch: Instant::now(),
    };
    // The batched path moves datagrams without copying them or waking the runtime for each;
    // a dump or a PROXY header needs each datagram on its own (the dumps stay as they were).
    if l.ctx.tap.is_none() && l.ctx.proxy_protocol.is_none() {
        return l.serve_batched().await;
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match pktinfo::recv(&l.sock, &mut buf, pktinfo).await {
            Ok((n, peer, dst)) => l.forward(peer, dst, &buf[..n]).await,
            Err(e) => l
                .ctx
                .debug(|| format!("udp {}: receive: {e}", l.map.listen)),
        }
    }
}

impl Listener {
    /// recvmmsg a batch; each run of datagrams for one known flow goes out in one sendmmsg
    /// (runs of equal-size datagrams as one UDP_SEGMENT message each). A datagram for a new
    /// flow, and everything after it, or what the backend socket had no room for, is copied out
    /// and forwarded one by one (waiting for room): order within a flow is kept and nothing is
    /// dropped here that the kernel did not drop.
    async fn serve_batched(self) {
        let fd = self.sock.as_raw_fd();
        enable_gro(&*self.sock);
        loop {
            if let Err(e) = self.sock.readable().await {
                self.ctx
                    .debug(|| format!("udp {}: wait: {e}", self.map.listen));
                continue;
            }
            let (rest, full) = BATCH_BUF.with(|cell| {
                let mut cell = cell.borrow_mut();
                let b = cell.get_or_insert_with(RecvBatch::new);
                let n = match b.recv_drained(&self.sock, fd) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Vec::new(), false),
                    Err(e) => {
                        self.ctx
                            .debug(|| format!("udp {}: receive: {e}", self.map.listen));
                        return (Vec::new(), false);
                    }
                };
                moved((0..n).map(|k| b.datagrams(k).count()).sum());
                let now = self.epoch.elapsed().as_millis() as u64;
                // Slot i, and how many of its datagrams already went (a partial send).
                let (mut i, mut skip) = (0, 0);
                let mut run: Vec<&[u8]> = Vec::with_capacity(BATCH);
                if let Ok(flows) = self.flows.lock() {
                    while i < n {
                        let Some((_, from, _)) = b.get(i) else { break };
                        let Some(flow) = flows.get(&from) else { break };
                        run.clear();
                        // (slot, datagrams of it) for mapping a partial send back.
                        let mut slots = Vec::with_capacity(4);
                        let mut j = i;
                        while j < n {
                            match b.get(j) {
                                Some((_, f, _)) if f == from => {
                                    let before = run.len();
                                    run.extend(b.datagrams(j));
                                    slots.push((j, run.len() - before));
                                }
                                _ => break,
                            }
                            j += 1;
                        }
                        let (done, sent) = match send_with_fallback(
                            flow.backend.as_raw_fd(),
                            &run,
                            None,
                            None,
                            &flow.gso,
                        ) {
                            Ok(k) => (k, k),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, 0),
                            Err(e) => {
                                // Like a failed send(): this run is lost, the flow goes on.
                                if !flow.sent_error(&self.ctx, &e) {
                                    self.ctx.debug(|| {
                                        format!(
                                            "#{} udp send to backend {}: {e}",
                                            flow.conn.id, flow.conn.backend
                                        )
                                    });
                                }
                                (run.len(), 0)
                            }
                        };
                        let bytes: u64 = run[..sent].iter().map(|d| d.len() as u64).sum();
                        flow.last.store(now, Ordering::Relaxed);
                        flow.count(&self.ctx, Direction::ClientToServer, bytes, sent);
                        if done == run.len() {
                            i = j;
                            continue;
                        }
                        // Stopped inside the run: find the slot and datagram it stopped at.
                        let mut left = done;
                        for (slot, k) in slots {
                            if left < k {
                                (i, skip) = (slot, left);
                                break;
                            }
                            left -= k;
                        }
                        break;
                    }
                }
                let mut rest = Vec::new();
                for k in i..n {
                    if let Some((_, from, dst)) = b.get(k) {
                        let from_k = if k == i { skip } else { 0 };
                        rest.extend(b.datagrams(k).skip(from_k).map(|d| (from, dst, d.to_vec())));
                    }
                }
                (rest, n == BATCH)
            });
            for (peer, dst, data) in rest {
                self.forward(peer, dst, &data).await;
            }
            // A full batch leaves more queued, so the thread does not park (where it paces).
            if full {
                pace_after_full(fd);
            }
        }
    }

    /// Forward one datagram from `peer` (sent to `dst`), opening its flow first if new.
    async fn forward(&self, peer: SocketAddr, dst: Option<IpAddr>, data: &[u8]) {
        let (ctx, map, epoch) = (&self.ctx, &self.map, self.epoch);
        let n = data.len();
        let existing = self.flows.lock().ok().and_then(|f| f.get(&peer).cloned());
        let flow = match existing {
            Some(f) => f,
            None => match open_flow_following(ctx, map, peer, dst, epoch).await {
                Ok(f) => {
                    if let Ok(mut m) = self.flows.lock() {
                        m.insert(peer, f.clone());
                    }
                    tokio::spawn(replies(
                        f.clone(),
                        self.sock.clone(),
                        peer,
                        self.flows.clone(),
                        ctx.clone(),
                        epoch,
                    ));
                    f
                }
                Err(e) => {
                    ctx.counters.dial_errors.fetch_add(1, Ordering::Relaxed);
                    ctx.log(
                        Level::Warn,
                        format!(
                            "udp {peer} -> {}: cannot open a backend socket to {}: {e}",
                            map.listen,
                            map.target_text()
                        ),
                    );
                    return;
                }
            },
        };
        flow.last
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(tap) = &ctx.tap {
            let offset = flow.up.load(Ordering::Relaxed);
            tap.send(Event::Data {
                conn: flow.conn.clone(),
                dir: Direction::ClientToServer,
                offset,
                ts: Timestamp::now(),
                bytes: Arc::new(data.to_vec()),
            })
            .await;
        }
        let sent = match &flow.header {
            None => flow.backend.send(data).await,
            Some(h) => {
                let mut d = Vec::with_capacity(h.len() + n);
                d.extend_from_slice(h);
                d.extend_from_slice(data);
                flow.backend
                    .send(&d)
                    .await
                    .map(|m| m.saturating_sub(h.len()))
            }
        };
        match sent {
            Ok(_) => flow.count(ctx, Direction::ClientToServer, n as u64, 1),
            Err(e) => {
                if !flow.sent_error(ctx, &e) {
                    ctx.debug(|| {
                        format!(
                            "#{} udp send to backend {}: {e}",
                            flow.conn.id, flow.conn.backend
                        )
                    })
                }
            }
        }
    }
}

/// [`open_flow`]; one that fails in a namespace --target-netns no longer names is opened once
/// more in the new one (the warn line says so). An error carries the --target-netns hint.
async fn open_flow_following(
    ctx: &Arc<Ctx>,
    map: &PortMap,
    peer: SocketAddr,
    dst: Option<IpAddr>,
    epoch: Instant,
) -> io::Result<Arc<Flow>> {
    let Some(w) = &ctx.target else {
        return open_flow(ctx, map, peer, dst, epoch).await;
    };
    let dialed_in = w.gen();
    let e = match open_flow(ctx, map, peer, dst, epoch).await {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let hint = ctx.target_hint_async().await;
    if w.gen() == dialed_in {
        return Err(io::Error::new(e.kind(), format!("{e}{hint}")));
    }
    ctx.log(
        Level::Warn,
        format!(
            "udp {peer} -> {}: cannot open a backend socket to {}: {e}{hint}; opening it again there",
            map.listen, map.target_text()
        ),
    );
    open_flow(ctx, map, peer, dst, epoch).await
}

/// A UDP socket connected to `to`, made in the dialer's namespace (with the client's address
/// in transparent mode) and sized for a flow.
async fn backend_socket(
    ctx: &Ctx,
    id: u64,
    client: SocketAddr,
    to: SocketAddr,
) -> io::Result<UdpSocket> {
    let to = ctx.rescoped(to);
    let d = ctx
        .dialer
        .socket(to, Type::DGRAM, ctx.source_for(client))
        .await?;
    if let Some(f) = &d.fallback {
        ctx.fallback(id, client, f);
    }
    size_rcvbuf(&d.socket, BACKEND_RCVBUF);
    say_if_capped(ctx);
    if batched_replies(ctx) {
        enable_gro(&d.socket);
    }
    let backend = UdpSocket::from_std(std::net::UdpSocket::from(d.socket))?;
    backend.connect(to).await?;
    Ok(backend)
}

async fn open_flow(
    ctx: &Ctx,
    map: &PortMap,
    peer: SocketAddr,
    dst: Option<IpAddr>,
    epoch: Instant,
) -> io::Result<Arc<Flow>> {
    let id = ctx.next_id();
    let client = canonical(peer);
    let ns_gen = ctx.target.as_ref().map_or(0, |w| w.gen());
    // A target name's addresses in order: the first one a socket connects to (a route to
    // it; UDP has no answer to wait for).
    let mut tried = Err(io::Error::other("no backend address"));
    for to in map.targets() {
        tried = backend_socket(ctx, id, client, to).await.map(|s| (s, to));
        if tried.is_ok() {
            break;
        }
    }
    if tried.is_err() {
        map.all_failed();
    }
    let (backend, to) = tried?;
    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
    ctx.counters.active.fetch_add(1, Ordering::Relaxed);
    ctx.counters.active_udp.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(ConnInfo {
        id,
        transport: Proto::Udp,
        client: canonical(peer),
        listen: SocketAddr::new(
            dst.unwrap_or(map.listen.ip()).to_canonical(),
            map.listen.port(),
        ),
        local: backend.local_addr().map(canonical)?,
        backend: to,
        unix: None,
    });
    ctx.debug(|| {
        format!(
            "#{id} udp flow {} -> {} => {} -> {}",
            conn.client, conn.listen, conn.local, conn.backend
        )
    });
    if let Some(tap) = &ctx.tap {
        tap.send(Event::Open {
            conn: conn.clone(),
            ts: Timestamp::now(),
        })
        .await;
    }
    let header = ctx
        .proxy_protocol
        .map(|pp| pp.header(Proto::Udp, conn.client, conn.listen));
    Ok(Arc::new(Flow {
        backend,
        header,
        conn,
        reply_from: dst,
        last: AtomicU64::new(epoch.elapsed().as_millis() as u64),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        gso: std::sync::atomic::AtomicBool::new(true),
        reply_gso: std::sync::atomic::AtomicBool::new(true),
        ns_gen,
        failed: Default::default(),
        poke: tokio::sync::Notify::new(),
        error_said: Default::default(),
    }))
}
