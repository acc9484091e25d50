//! The batched send path: sendmmsg of a run of datagrams, equal-size runs as one UDP_SEGMENT
//! message each, from the client's destination address (IP_PKTINFO) when replying.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::CTRL_WORDS;

/// setsockopt(SOL_UDP, UDP_SEGMENT): a send whose cmsg carries this size is cut by the kernel
/// (or the NIC) into datagrams of that size, the last one shorter (Linux 4.18; not in every libc).
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams in one UDP_SEGMENT send (UDP_MAX_SEGMENTS: 64 up to Linux 6.8, more since).
const GSO_MAX_SEGS: usize = 64;
/// Most payload bytes in one UDP_SEGMENT send (a UDP/IPv4 datagram's limit, 65535 - 20 - 8).
const GSO_MAX_BYTES: usize = 65_507;

/// One sendmmsg message: datagrams `first..first + count` of the batch, sent with UDP_SEGMENT
/// `seg` when there are several.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Msg {
    /// Index of its first datagram.
    pub(super) first: usize,
    /// How many datagrams it carries.
    pub(super) count: usize,
    /// Their size (the last may be shorter).
    pub(super) seg: usize,
}

/// Group `datagrams` into messages: with `gso`, each run of equal-size datagrams (the last of a
/// run may be shorter) becomes one UDP_SEGMENT message within the kernel's limits; the kernel
/// cuts it back at the same boundaries, in the same order. Without, one message each.
pub(super) fn plan(datagrams: &[&[u8]], gso: bool) -> Vec<Msg> {
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
pub(super) fn send_with_fallback(
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
