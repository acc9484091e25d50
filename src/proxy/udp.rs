//! UDP: one flow per client address, each with its own backend socket (made in the target
//! namespace); replies leave from the address the client sent to; idle flows expire.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use socket2::Type;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::spec::PortMap;
use super::tcp::canonical;
use super::{Ctx, Level, Proto};
use crate::tap::event::{CloseReason, ConnInfo, Direction, Event, Timestamp};

/// Largest datagram (64 KiB).
const MAX_DATAGRAM: usize = 65_536;

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
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

fn recv_pktinfo(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::in_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let mut dst = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(pi) => {
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))))
            }
            ControlMessageOwned::Ipv6PacketInfo(pi) => {
                dst = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)))
            }
            _ => {}
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(SocketAddr::V4((*v4).into()))
            } else {
                a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
            }
        })
        .filter(|_| msg.address.map(|a| a.len() > 0).unwrap_or(false))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, from, dst))
}

fn send_pktinfo(fd: RawFd, buf: &[u8], to: SocketAddr, from: IpAddr) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn, SockaddrIn6};
    let iov = [io::IoSlice::new(buf)];
    match (to, from) {
        (SocketAddr::V4(to), IpAddr::V4(from)) => {
            let pi = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(from).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&pi)],
                MsgFlags::empty(),
                Some(&SockaddrIn::from(to)),
            )
        }
        (SocketAddr::V6(to), IpAddr::V6(from)) => {
            let pi = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: from.octets(),
                },
                ipi6_ifindex: 0,
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&pi)],
                MsgFlags::empty(),
                Some(&SockaddrIn6::from(to)),
            )
        }
        _ => {
            return Err(io::Error::other(
                "address family mismatch between client and reply source",
            ))
        }
    }
    .map_err(io::Error::from)
}

async fn recv(
    sock: &UdpSocket,
    buf: &mut [u8],
    pktinfo: bool,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if !pktinfo {
        let (n, a) = sock.recv_from(buf).await?;
        return Ok((n, a, None));
    }
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || recv_pktinfo(sock.as_raw_fd(), buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn send_to(
    sock: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let Some(from) = from.filter(|ip| !ip.is_multicast() && *ip != IpAddr::V4(Ipv4Addr::BROADCAST))
    else {
        return sock.send_to(buf, to).await;
    };
    loop {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || {
            send_pktinfo(sock.as_raw_fd(), buf, to, from)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Receive forever on one listening socket.
pub(crate) async fn serve(sock: UdpSocket, map: PortMap, ctx: Arc<Ctx>) {
    let sock = Arc::new(sock);
    let pktinfo = map.listen.ip().is_unspecified();
    let flows: Flows = Arc::new(Mutex::new(HashMap::new()));
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer, dst) = match recv(&sock, &mut buf, pktinfo).await {
            Ok(x) => x,
            Err(e) => {
                ctx.debug(|| format!("udp {}: receive: {e}", map.listen));
                continue;
            }
        };
        let existing = flows.lock().ok().and_then(|f| f.get(&peer).cloned());
        let flow = match existing {
            Some(f) => f,
            None => match open_flow(&ctx, &map, peer, dst, epoch).await {
                Ok(f) => {
                    if let Ok(mut m) = flows.lock() {
                        m.insert(peer, f.clone());
                    }
                    tokio::spawn(replies(
                        f.clone(),
                        sock.clone(),
                        peer,
                        flows.clone(),
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
                            map.listen, map.target
                        ),
                    );
                    continue;
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
                bytes: Arc::new(buf[..n].to_vec()),
            })
            .await;
        }
        let sent = match &flow.header {
            None => flow.backend.send(&buf[..n]).await,
            Some(h) => {
                let mut d = Vec::with_capacity(h.len() + n);
                d.extend_from_slice(h);
                d.extend_from_slice(&buf[..n]);
                flow.backend
                    .send(&d)
                    .await
                    .map(|m| m.saturating_sub(h.len()))
            }
        };
        match sent {
            Ok(_) => {
                flow.up.fetch_add(n as u64, Ordering::Relaxed);
                ctx.counters
                    .bytes_c2s
                    .fetch_add(n as u64, Ordering::Relaxed);
                ctx.counters.datagrams.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                ctx.debug(|| format!("#{} udp send to backend {}: {e}", flow.conn.id, map.target))
            }
        }
    }
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
    let d = ctx
        .dialer
        .socket(map.target, Type::DGRAM, ctx.source_for(client))
        .await?;
    if let Some(f) = &d.fallback {
        ctx.fallback(id, client, f);
    }
    let backend = UdpSocket::from_std(std::net::UdpSocket::from(d.socket))?;
    backend.connect(map.target).await?;
    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
    ctx.counters.active.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(ConnInfo {
        id,
        transport: Proto::Udp,
        client: canonical(peer),
        listen: SocketAddr::new(
            dst.unwrap_or(map.listen.ip()).to_canonical(),
            map.listen.port(),
        ),
        local: backend.local_addr().map(canonical)?,
        backend: map.target,
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
        .map(|_| super::proxy_protocol::v2_header(Proto::Udp, conn.client, conn.listen));
    Ok(Arc::new(Flow {
        backend,
        header,
        conn,
        reply_from: dst,
        last: AtomicU64::new(epoch.elapsed().as_millis() as u64),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
    }))
}

async fn replies(
    flow: Arc<Flow>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    flows: Flows,
    ctx: Arc<Ctx>,
    epoch: Instant,
) {
    let idle = ctx.udp_idle.as_millis() as u64;
    loop {
        let now = epoch.elapsed().as_millis() as u64;
        let since = now.saturating_sub(flow.last.load(Ordering::Relaxed));
        if since >= idle {
            break;
        }
        let wait = std::time::Duration::from_millis(idle - since);
        // Wait without a buffer: a flow holds none while it waits (a 64 KiB one per flow made
        // thousands of flows cost ~58 KB each); the datagram is read into the thread's scratch
        // buffer and copied out at its size.
        let got = match tokio::time::timeout(wait, flow.backend.readable()).await {
            Err(_) => continue,
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => SCRATCH.with(|b| {
                let mut b = b.borrow_mut();
                flow.backend.try_recv(&mut b).map(|n| b[..n].to_vec())
            }),
        };
        let buf = match got {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // ICMP port unreachable from an earlier datagram: the backend may come back.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
            Err(e) => {
                ctx.debug(|| format!("#{} udp receive from backend: {e}", flow.conn.id));
                break;
            }
            Ok(data) => data,
        };
        let n = buf.len();
        flow.last
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(tap) = &ctx.tap {
            tap.send(Event::Data {
                conn: flow.conn.clone(),
                dir: Direction::ServerToClient,
                offset: flow.down.load(Ordering::Relaxed),
                ts: Timestamp::now(),
                bytes: Arc::new(buf.clone()),
            })
            .await;
        }
        match send_to(&sock, &buf, peer, flow.reply_from).await {
            Ok(_) => {
                flow.down.fetch_add(n as u64, Ordering::Relaxed);
                ctx.counters
                    .bytes_s2c
                    .fetch_add(n as u64, Ordering::Relaxed);
                ctx.counters.datagrams.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.debug(|| format!("#{} udp reply to {peer}: {e}", flow.conn.id)),
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
    ctx.counters.active.fetch_sub(1, Ordering::Relaxed);
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
