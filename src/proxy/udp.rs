//! UDP: one flow per client address, each with its own backend socket (made in the target
//! namespace); replies leave from the address the client sent to; idle flows expire.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::Type;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::sock::set_int_opt;
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
    /// Whether sends to the backend may use UDP_SEGMENT (off once the path refused it).
    gso: std::sync::atomic::AtomicBool,
    /// The same for replies to the client.
    reply_gso: std::sync::atomic::AtomicBool,
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
    let Some(from) = reply_source(from) else {
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

/// Datagrams taken per recvmmsg / given per sendmmsg on the fast path.
const BATCH: usize = 32;

/// Datagrams the proxy's UDP sockets must hold while the UDP thread goes without CPU: 50 ms
/// of 1400-byte datagrams at 1.5 Gbit/s (134 000 a second). A busy machine takes the thread
/// off the CPU for tens of milliseconds (a loaded bench round lost 8 693 at the listening
/// socket); whatever arrives meanwhile waits in the socket, or is dropped once it is full.
const STARVED_BURST: usize = 6_700;

/// What one 1400-byte datagram costs in a receive queue (its truesize: the 2 KiB block of its
/// bytes plus the sk_buff): 4 MiB of queue held 1 820 of them over loopback.
const DATAGRAM_TRUESIZE: usize = 2_304;

/// Receive buffer asked for on listening sockets: 16 MiB, the burst's 15.4 MB
/// ([`STARVED_BURST`] x [`DATAGRAM_TRUESIZE`]) rounded up. The kernel doubles what it is asked
/// for (socket(7): room for its bookkeeping), so the queue takes 32 MiB, the burst twice over:
/// for a gap longer than 50 ms, or a driver whose frames cost more than loopback's (a 4 KiB
/// page each). The default 208 KiB holds a millisecond of 1 Gbit/s. A limit, not an
/// allocation: memory is used only while datagrams wait (1000 idle ports cost the same RSS
/// as with the default), and net.ipv4.udp_mem caps all UDP sockets together.
pub(crate) const LISTEN_RCVBUF: usize = 16 << 20;

/// Receive buffer of a flow's backend socket: the same as the listener's. A bulk reply
/// stream (a backend answering one request with a burst) fills it while the thread is off the
/// CPU just as a client's stream fills the listener; DNS-sized traffic never uses it.
pub(crate) const BACKEND_RCVBUF: usize = LISTEN_RCVBUF;

/// How long the UDP thread waits after each batch of a dense stream before it reads again,
/// like a NIC's interrupt moderation (rx-usecs): datagrams that arrive meanwhile are moved by
/// the next read in one batch instead of each waking the thread, and each waking the receiver
/// behind the backend socket. It also paces a small backlog (the thread was descheduled for a
/// moment): at most one batch (32 datagrams, ~45 KB of 1400-byte ones) goes to a backend per
/// wait, where a back-to-back drain overflowed a receiver's default 208 KiB buffer. At 1 Gbit/s
/// of 1400-byte datagrams a wait gathers ~9. Paced, the thread moves at most 32 datagrams per
/// wait, ~320 000 a second when the wait lasts what it should; a wait that stretches to
/// milliseconds on a busy machine cuts that to a few thousand, so while the socket's queue is
/// over a quarter of its buffer the wait is shorter ([`BACKLOG_SHARE`]).
/// NETTOOL_PROXY_UDP_COALESCE_US overrides (0: off).
const COALESCE_US: u64 = 100;

/// The wait of [`COALESCE_US`], or the override; None when turned off.
fn coalesce() -> Option<Duration> {
    static WAIT: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        let us = std::env::var("NETTOOL_PROXY_UDP_COALESCE_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|us| us.min(10_000))
            .unwrap_or(COALESCE_US);
        (us > 0).then(|| Duration::from_micros(us))
    })
}

/// Datagrams a batch must have held for the thread to wait: two or more arrived while it was
/// busy, so more are coming. A request/response client (one datagram, then its answer) never
/// reaches it and never waits; nor does a stream slower than two datagrams per wait.
const COALESCE_MIN: usize = 2;

/// A socket whose receive queue holds more than 1/BACKLOG_SHARE of its buffer is behind: the
/// thread's waits stretched to milliseconds on a busy machine (it was not scheduled back in
/// time), and at one batch per wait it would fall further behind until the socket drops.
/// While behind, the wait after a full batch is a fifth ([`BEHIND_DIVISOR`]) of the usual (at
/// most 20 us).
const BACKLOG_SHARE: u32 = 4;

/// How much shorter the wait is while a socket is behind. Still a wait, not none: draining a
/// backlog back to back took the CPU from the receiver behind the backend socket, which then
/// dropped more than the proxy's socket had (by hand at load 3-6, iperf3 -u 1 Gbit/s, 3 s
/// rounds: no wait lost 26-35%, the usual wait 18-35% (most of it at the proxy's socket), a
/// fifth of it 12-15% with none at the proxy's socket; docs/proxy-bench.md has the table).
const BEHIND_DIVISOR: u32 = 5;

thread_local! {
    /// Datagrams the batched paths moved since this thread last waited.
    static MOVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// A full batch found its socket backlogged (see [`BACKLOG_SHARE`]): shorten the next wait.
    static BEHIND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// SO_MEMINFO of `fd`: the socket's memory counters, indexed by SK_MEMINFO_* (None if the
/// kernel refused).
fn meminfo(fd: RawFd) -> Option<[u32; 16]> {
    let mut mem = [0u32; 16];
    let mut len = std::mem::size_of_val(&mem) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mem`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            mem.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(mem)
}

/// After a full batch from `fd` (more datagrams are queued): whether its receive queue holds
/// more than 1/[`BACKLOG_SHARE`] of its buffer (SO_MEMINFO). Asked only then, so a stream
/// that keeps up costs no system call for it.
fn backlogged(fd: RawFd) -> bool {
    meminfo(fd).is_some_and(|mem| {
        mem[libc::SK_MEMINFO_RMEM_ALLOC as usize]
            > mem[libc::SK_MEMINFO_RCVBUF as usize] / BACKLOG_SHARE
    })
}

/// A full batch came from `fd`: pace, for a shorter time if its socket is backlogged.
fn pace_after_full(fd: RawFd) {
    if backlogged(fd) {
        BEHIND.with(|b| b.set(true));
    }
    pace();
}

/// Count datagrams moved by a batched path (for [`pace`]).
fn moved(n: usize) {
    MOVED.with(|m| m.set(m.get() + n));
}

/// Wait [`COALESCE_US`] if the datagrams moved since the last wait make a dense stream. The UDP
/// thread calls it before it blocks for events (its runtime's park hook) and after a full batch
/// (which does not block: more are queued); shorter when that batch found its socket behind.
/// The thread serves every UDP listener of the proxy,
/// so while one port carries a dense stream a datagram on another can wait the same 100 us.
pub(crate) fn pace() {
    let behind = BEHIND.with(|b| b.replace(false));
    if MOVED.with(|m| m.replace(0)) >= COALESCE_MIN {
        if let Some(wait) = coalesce() {
            // Behind, at most a fifth of the default too: an override that lengthens the wait
            // does not slow the catching up.
            let short =
                (wait / BEHIND_DIVISOR).min(Duration::from_micros(COALESCE_US) / BEHIND_DIVISOR);
            std::thread::sleep(if behind { short } else { wait });
        }
    }
}

/// The smallest receive queue (bytes, as the kernel counts them) a socket got when
/// net.core.rmem_max capped what [`size_rcvbuf`] asked for; 0 while none was capped.
static CAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Whether [`say_if_capped`] has said it (once per process).
static CAPPED_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SO_RCVBUFFORCE (root may exceed net.core.rmem_max), else SO_RCVBUF capped by the sysctl;
/// a capped socket is remembered for [`say_if_capped`] (the sockets are made before the log
/// is at hand).
pub(crate) fn size_rcvbuf(s: &impl AsRawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    // SO_RCVBUFFORCE is never capped: no SO_MEMINFO to ask then (one getsockopt less per new
    // flow, a DNS query from a fresh port being one).
    if set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_ok() {
        return;
    }
    let _ = set_int_opt(s, libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    // The kernel doubles what it is asked for; less than that means the sysctl capped it.
    if let Some(mem) = meminfo(s.as_raw_fd()) {
        let got = mem[libc::SK_MEMINFO_RCVBUF as usize] as usize;
        if got < 2 * bytes {
            let _ = CAPPED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c == 0 || got < c).then_some(got)
            });
        }
    }
}

/// Say once in the log that net.core.rmem_max capped a UDP socket's receive buffer (not root:
/// SO_RCVBUFFORCE needs CAP_NET_ADMIN), with how long a gap the smaller queue rides out.
pub(crate) fn say_if_capped(ctx: &Ctx) {
    let got = CAPPED.load(Ordering::Relaxed);
    if got == 0 || CAPPED_SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    let holds = got / DATAGRAM_TRUESIZE;
    let want = 2 * LISTEN_RCVBUF / DATAGRAM_TRUESIZE;
    // 1400-byte datagrams at 1.5 Gbit/s: 134 per millisecond.
    let ms = |n: usize| n * 50 / STARVED_BURST;
    ctx.log(
        Level::Warn,
        format!(
            "udp: receive buffers capped at {} KiB by net.core.rmem_max (asked for {} KiB; \
             above it needs CAP_NET_ADMIN): a socket holds ~{holds} datagrams of 1400 bytes, \
             {} ms of 1.5 Gbit/s while the UDP thread is off the CPU (uncapped: {} ms); \
             raise it with `sysctl -w net.core.rmem_max={}` or run the proxy as root",
            got / 2 / 1024,
            LISTEN_RCVBUF / 1024,
            ms(holds),
            ms(want),
            LISTEN_RCVBUF
        ),
    );
}

/// The UDP thread's receive batch: BATCH slots of the largest datagram, with their source
/// addresses and control messages. One per thread (every listener runs on the one UDP thread
/// and uses it without awaiting), 2 MiB once, not per listener.
struct RecvBatch {
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

thread_local! {
    static BATCH_BUF: std::cell::RefCell<Option<Box<RecvBatch>>> = const { std::cell::RefCell::new(None) };
}

impl RecvBatch {
    fn new() -> Box<RecvBatch> {
        Box::new(RecvBatch {
            buf: vec![0u8; BATCH * MAX_DATAGRAM],
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr (null pointers, zero lengths).
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            ctrl: vec![[0u64; CTRL_WORDS]; BATCH],
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        })
    }

    /// recvmmsg without waiting: how many datagrams arrived (WouldBlock when none).
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.buf[i * MAX_DATAGRAM..].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>();
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// [`RecvBatch::recv`] through tokio's readiness. A batch that did not fill means the
    /// queue is drained: the readiness is cleared now (as tokio's own TCP read does), not by one
    /// more recvmmsg that fails EAGAIN, a system call per wake-up fewer. A datagram that arrives
    /// after the recvmmsg raises a new edge, so none is left waiting.
    fn recv_drained(&mut self, sock: &UdpSocket, fd: RawFd) -> io::Result<usize> {
        let mut got = 0;
        match sock.try_io(Interest::READABLE, || {
            got = self.recv(fd)?;
            if got < BATCH {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }

    /// Slot `i`: its bytes, source and (with pktinfo) destination address.
    fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, Option<IpAddr>)> {
        let (data, dst, _) = self.slot(i);
        let from = sockaddr_to(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)?;
        Some((data, from, dst))
    }

    /// The datagrams of slot `i` (several when GRO coalesced them), whoever sent them.
    fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let (data, _, seg) = self.slot(i);
        segments(data, seg)
    }

    /// Slot `i`: its bytes, destination address (with pktinfo) and GRO segment size (0: one datagram).
    fn slot(&self, i: usize) -> (&[u8], Option<IpAddr>, usize) {
        let h = &self.hdrs[i];
        let data = &self.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + h.msg_len as usize];
        let mut seg = 0;
        let mut dst = None;
        // SAFETY: walking the control buffer the kernel filled, with the libc CMSG macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let pi =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                        dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let pi = std::ptr::read_unaligned(
                            libc::CMSG_DATA(c) as *const libc::in6_pktinfo
                        );
                        dst = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
                    }
                    (libc::SOL_UDP, UDP_GRO) => {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        seg = v.max(0) as usize;
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        (data, dst, seg)
    }
}

/// A kernel socket address as a SocketAddr (None for another family or an empty one).
fn sockaddr_to(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// setsockopt(SOL_UDP, UDP_SEGMENT): a send whose cmsg carries this size is cut by the kernel
/// (or the NIC) into datagrams of that size, the last one shorter (Linux 4.18; not in every libc).
const UDP_SEGMENT: libc::c_int = 103;
/// setsockopt(SOL_UDP, UDP_GRO): the kernel may hand several datagrams of one flow over in one
/// receive, with their size in a cmsg (Linux 5.0).
const UDP_GRO: libc::c_int = 104;
/// Most datagrams in one UDP_SEGMENT send (UDP_MAX_SEGMENTS: 64 up to Linux 6.8, more since).
const GSO_MAX_SEGS: usize = 64;
/// Most payload bytes in one UDP_SEGMENT send (a UDP/IPv4 datagram's limit, 65535 - 20 - 8).
const GSO_MAX_BYTES: usize = 65_507;

/// Ask for UDP_GRO on a socket only ever read through [`RecvBatch`] (which splits what it
/// coalesced). Best effort: a kernel without it hands datagrams over one by one.
fn enable_gro(s: &impl AsRawFd) {
    let _ = set_int_opt(s, libc::SOL_UDP, UDP_GRO, 1);
}

/// The datagrams of one receive slot: one, or those a GRO receive coalesced (`seg` bytes each,
/// the last one shorter).
fn segments(data: &[u8], seg: usize) -> impl Iterator<Item = &[u8]> {
    let seg = if seg == 0 || seg >= data.len() {
        data.len().max(1)
    } else {
        seg
    };
    // An empty datagram is still one datagram.
    let empty = data.is_empty();
    data.chunks(seg).chain(empty.then_some(data))
}

/// One sendmmsg message: datagrams `first..first + count` of the batch, sent with UDP_SEGMENT
/// `seg` when there are several.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Msg {
    first: usize,
    count: usize,
    seg: usize,
}

/// Group `datagrams` into messages: with `gso`, each run of equal-size datagrams (the last of a
/// run may be shorter) becomes one UDP_SEGMENT message within the kernel's limits; the kernel
/// cuts it back at the same boundaries, in the same order. Without, one message each.
fn plan(datagrams: &[&[u8]], gso: bool) -> Vec<Msg> {
    let mut msgs = Vec::with_capacity(if gso { 4 } else { datagrams.len() });
    let mut i = 0;
    while i < datagrams.len() {
        let seg = datagrams[i].len();
        let (mut count, mut bytes) = (1, seg);
        if gso && seg > 0 {
            while let Some(d) = datagrams.get(i + count) {
                if d.is_empty()
                    || d.len() > seg
                    || count == GSO_MAX_SEGS
                    || bytes + d.len() > GSO_MAX_BYTES
                {
                    break;
                }
                count += 1;
                bytes += d.len();
                if d.len() < seg {
                    break;
                }
            }
        }
        msgs.push(Msg {
            first: i,
            count,
            seg,
        });
        i += count;
    }
    msgs
}

/// Whether a send failed because this path cannot segment (no checksum offload on the route's
/// device, an IPsec route, a segment over the MTU): sending them one by one works.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Control room per message: IPV6_PKTINFO (the larger pktinfo) and UDP_SEGMENT.
const CTRL_WORDS: usize = 10;

/// Writes one control message carrying `value` at `cm` and returns the space it takes.
///
/// # Safety
/// `cm` points at a cmsghdr inside a control buffer with at least
/// `CMSG_SPACE(size_of::<T>())` bytes left from it.
unsafe fn put_cmsg<T>(
    cm: *mut libc::cmsghdr,
    level: libc::c_int,
    kind: libc::c_int,
    value: T,
) -> usize {
    let len = std::mem::size_of::<T>() as u32;
    (*cm).cmsg_level = level;
    (*cm).cmsg_type = kind;
    (*cm).cmsg_len = libc::CMSG_LEN(len) as usize;
    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut T, value);
    libc::CMSG_SPACE(len) as usize
}

/// sendmmsg `datagrams` on `fd` without waiting, to `to` (None: a connected socket), from `from`
/// (IP_PKTINFO, a reply from the address the client sent to), as UDP_SEGMENT messages with
/// `gso`. Returns how many datagrams went out, in order; WouldBlock when none had room.
fn send_datagrams(
    fd: RawFd,
    datagrams: &[&[u8]],
    to: Option<&socket2::SockAddr>,
    from: Option<IpAddr>,
    gso: bool,
) -> io::Result<usize> {
    let msgs = plan(datagrams, gso);
    let mut iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut ctrl = vec![[0u64; CTRL_WORDS]; msgs.len()];
    // SAFETY: all-zero mmsghdrs are valid; each is filled in below.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; msgs.len()];
    for ((m, h), c) in msgs.iter().zip(hdrs.iter_mut()).zip(ctrl.iter_mut()) {
        let h = &mut h.msg_hdr;
        h.msg_iov = iovs[m.first..].as_mut_ptr();
        h.msg_iovlen = m.count;
        if let Some(to) = to {
            h.msg_name = to.as_ptr() as *mut libc::c_void;
            h.msg_namelen = to.len();
        }
        h.msg_control = c.as_mut_ptr() as *mut libc::c_void;
        h.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>();
        // SAFETY: the control buffer is CTRL_WORDS * 8 bytes, room for both messages below
        // (CMSG_SPACE(20) + CMSG_SPACE(2) = 64); the CMSG macros stay inside msg_controllen.
        let used = unsafe {
            let mut used = 0;
            let mut cm = libc::CMSG_FIRSTHDR(h);
            match from {
                Some(IpAddr::V4(ip)) => {
                    let pi = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(ip).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    used += put_cmsg(cm, libc::IPPROTO_IP, libc::IP_PKTINFO, pi);
                    cm = libc::CMSG_NXTHDR(h, cm);
                }
                Some(IpAddr::V6(ip)) => {
                    let pi = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: ip.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    used += put_cmsg(cm, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, pi);
                    cm = libc::CMSG_NXTHDR(h, cm);
                }
                None => {}
            }
            if m.count > 1 {
                used += put_cmsg(cm, libc::SOL_UDP, UDP_SEGMENT, m.seg as u16);
            }
            used
        };
        h.msg_controllen = used;
        if used == 0 {
            h.msg_control = std::ptr::null_mut();
        }
    }
    let mut sent_msgs = 0;
    while sent_msgs < hdrs.len() {
        let chunk = (hdrs.len() - sent_msgs).min(1024);
        // SAFETY: the headers point at iovecs, names and control buffers that outlive the call.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[sent_msgs..].as_mut_ptr(),
                chunk as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if sent_msgs > 0 {
                break;
            }
            return Err(e);
        }
        sent_msgs += r as usize;
        if (r as usize) < chunk {
            break;
        }
    }
    Ok(msgs[..sent_msgs].iter().map(|m| m.count).sum())
}

/// [`send_datagrams`] with UDP_SEGMENT while `gso` holds; a path that refuses it turns it off
/// (for good: the route does not change under a flow) and the same datagrams go one by one.
fn send_with_fallback(
    fd: RawFd,
    datagrams: &[&[u8]],
    to: Option<&socket2::SockAddr>,
    from: Option<IpAddr>,
    gso: &std::sync::atomic::AtomicBool,
) -> io::Result<usize> {
    let on = gso.load(Ordering::Relaxed) && datagrams.len() > 1;
    match send_datagrams(fd, datagrams, to, from, on) {
        Err(e) if on && gso_refused(&e) => {
            gso.store(false, Ordering::Relaxed);
            send_datagrams(fd, datagrams, to, from, false)
        }
        r => r,
    }
}

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
        match recv(&l.sock, &mut buf, pktinfo).await {
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
                                self.ctx.debug(|| {
                                    format!(
                                        "#{} udp send to backend {}: {e}",
                                        flow.conn.id, self.map.target
                                    )
                                });
                                (run.len(), 0)
                            }
                        };
                        let bytes: u64 = run[..sent].iter().map(|d| d.len() as u64).sum();
                        flow.last.store(now, Ordering::Relaxed);
                        flow.up.fetch_add(bytes, Ordering::Relaxed);
                        self.ctx
                            .counters
                            .bytes_c2s
                            .fetch_add(bytes, Ordering::Relaxed);
                        self.ctx
                            .counters
                            .datagrams
                            .fetch_add(sent as u64, Ordering::Relaxed);
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
            None => match open_flow(ctx, map, peer, dst, epoch).await {
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
                            map.listen, map.target
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
    size_rcvbuf(&d.socket, BACKEND_RCVBUF);
    say_if_capped(ctx);
    if batched_replies(ctx) {
        enable_gro(&d.socket);
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
    }))
}

/// Whether replies are moved in batches (recvmmsg from the backend, sendmmsg to the client):
/// unless a dump needs each datagram on its own.
fn batched_replies(ctx: &Ctx) -> bool {
    ctx.tap.is_none()
}

/// What one wake-up of a flow's reply task got from its backend socket.
enum Got {
    /// Nothing (yet), or an error that leaves the flow open.
    Nothing,
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Nothing,
            // ICMP port unreachable from an earlier datagram: the backend may come back.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Got::Nothing,
            Err(e) => return Got::Failed(e),
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
        flow.down.fetch_add(bytes, Ordering::Relaxed);
        ctx.counters.bytes_s2c.fetch_add(bytes, Ordering::Relaxed);
        ctx.counters
            .datagrams
            .fetch_add(ok as u64, Ordering::Relaxed);
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
fn reply_source(from: Option<IpAddr>) -> Option<IpAddr> {
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
    match send_to(sock, &buf, peer, flow.reply_from).await {
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

async fn replies(
    flow: Arc<Flow>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    flows: Flows,
    ctx: Arc<Ctx>,
    epoch: Instant,
) {
    let idle = ctx.udp_idle.as_millis() as u64;
    let batched = batched_replies(&ctx);
    let to = socket2::SockAddr::from(peer);
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
        let got = match tokio::time::timeout(wait, flow.backend.readable()).await {
            Err(_) => continue,
            Ok(Err(e)) => Got::Failed(e),
            Ok(Ok(())) if batched => reply_batch(&flow, &sock, &to, &ctx, epoch),
            Ok(Ok(())) => match SCRATCH.with(|b| {
                let mut b = b.borrow_mut();
                flow.backend.try_recv(&mut b).map(|n| b[..n].to_vec())
            }) {
                Ok(d) => Got::Datagrams(vec![d]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Got::Nothing,
                Err(e) => Got::Failed(e),
            },
        };
        let datagrams = match got {
            Got::Nothing => continue,
            Got::Failed(e) => {
                ctx.debug(|| format!("#{} udp receive from backend: {e}", flow.conn.id));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(sizes: &[usize], gso: bool) -> Vec<(usize, usize, usize)> {
        let bufs: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0u8; *n]).collect();
        let d: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        plan(&d, gso)
            .into_iter()
            .map(|m| (m.first, m.count, m.seg))
            .collect()
    }

    #[test]
    fn plan_groups_equal_runs_the_last_may_be_shorter() {
        // Equal sizes, then a shorter one ends the run; a larger one starts a new one.
        assert_eq!(
            msgs(&[100, 100, 100, 40, 100, 200, 200], true),
            vec![(0, 4, 100), (4, 1, 100), (5, 2, 200)]
        );
        // Without GSO, one message per datagram.
        assert_eq!(
            msgs(&[100, 100, 40], false),
            vec![(0, 1, 100), (1, 1, 100), (2, 1, 40)]
        );
        // An empty datagram is never part of a run.
        assert_eq!(
            msgs(&[0, 0, 10, 0], true),
            vec![(0, 1, 0), (1, 1, 0), (2, 1, 10), (3, 1, 0)]
        );
    }

    #[test]
    fn plan_keeps_within_the_kernels_segment_and_size_limits() {
        // 1400-byte datagrams: 46 fit in 65 507 bytes.
        let m = msgs(&[1400; 100], true);
        assert_eq!(m, vec![(0, 46, 1400), (46, 46, 1400), (92, 8, 1400)]);
        // Small ones: at most GSO_MAX_SEGS per message.
        let m = msgs(&[10; 130], true);
        assert_eq!(m, vec![(0, 64, 10), (64, 64, 10), (128, 2, 10)]);
        // A datagram too large to share a message goes alone.
        let m = msgs(&[40_000, 40_000, 60_000], true);
        assert_eq!(m, vec![(0, 1, 40_000), (1, 1, 40_000), (2, 1, 60_000)]);
    }

    #[test]
    fn a_gro_slot_splits_at_its_segment_size() {
        let data: Vec<u8> = (0..25u8).collect();
        let parts: Vec<&[u8]> = segments(&data, 10).collect();
        assert_eq!(parts, vec![&data[..10], &data[10..20], &data[20..]]);
        // No GRO: one datagram, even an empty one.
        assert_eq!(segments(&data, 0).count(), 1);
        assert_eq!(segments(&[], 0).collect::<Vec<_>>(), vec![&[] as &[u8]]);
    }
}
