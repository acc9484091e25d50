//! The batched receive path: recvmmsg into the UDP thread's one batch, with each datagram's
//! source, destination (IP_PKTINFO) and GRO segment size.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::super::sock::set_int_opt;
use super::{BATCH, CTRL_WORDS, MAX_DATAGRAM};

/// setsockopt(SOL_UDP, UDP_GRO): the kernel may hand several datagrams of one flow over in one
/// receive, with their size in a cmsg (Linux 5.0).
const UDP_GRO: libc::c_int = 104;

/// The UDP thread's receive batch: BATCH slots of the largest datagram, with their source
/// addresses and control messages. One per thread (every listener runs on the one UDP thread
/// and uses it without awaiting), 2 MiB once, not per listener.
pub(super) struct RecvBatch {
    buf: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

thread_local! {
    /// The UDP thread's one [`RecvBatch`], made at its first batched receive.
    pub(super) static BATCH_BUF: std::cell::RefCell<Option<Box<RecvBatch>>> = const { std::cell::RefCell::new(None) };
}

impl RecvBatch {
    /// A batch with room for [`BATCH`] datagrams of the largest size.
    pub(super) fn new() -> Box<RecvBatch> {
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
    pub(super) fn recv_drained(&mut self, sock: &UdpSocket, fd: RawFd) -> io::Result<usize> {
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
    pub(super) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, Option<IpAddr>)> {
        let (data, dst, _) = self.slot(i);
        let from = sockaddr_to(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)?;
        Some((data, from, dst))
    }

    /// The datagrams of slot `i` (several when GRO coalesced them), whoever sent them.
    pub(super) fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
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

/// Ask for UDP_GRO on a socket only ever read through [`RecvBatch`] (which splits what it
/// coalesced). Best effort: a kernel without it hands datagrams over one by one.
pub(super) fn enable_gro(s: &impl AsRawFd) {
    let _ = set_int_opt(s, libc::SOL_UDP, UDP_GRO, 1);
}

/// The datagrams of one receive slot: one, or those a GRO receive coalesced (`seg` bytes each,
/// the last one shorter).
pub(super) fn segments(data: &[u8], seg: usize) -> impl Iterator<Item = &[u8]> {
    let seg = if seg == 0 || seg >= data.len() {
        data.len().max(1)
    } else {
        seg
    };
    // An empty datagram is still one datagram.
    let empty = data.is_empty();
    data.chunks(seg).chain(empty.then_some(data))
}
