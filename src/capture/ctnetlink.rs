//! --follow's source of NAT state: conntrack entries straight from ctnetlink, in each captured
//! namespace. A socket subscribes to NFNLGRP_CONNTRACK_NEW and _UPDATE, then asks for a dump of
//! the table (the entries that existed before the capture started), so an entry is known as soon
//! as the kernel confirms it: the event is queued in the same softirq that passes the packet on,
//! before the capture ring hands over the block holding that packet. No polling of `conntrack -L`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::NlasIterator;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::follow::{CtFlow, Tuple};

/// NFNLGRP_CONNTRACK_NEW and NFNLGRP_CONNTRACK_UPDATE.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW: events and dump answers alike.
const CT_NEW: u16 = 1 << 8;
/// NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET.
const CT_GET: u16 = (1 << 8) | 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMPV6_ID: u16 = 7;

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// One CTA_TUPLE_* nest. ICMP echo is keyed by its id on both "ports" (what conntrack does:
/// the id is the flow's identity, the type says the direction).
fn tuple(nest: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport, mut id) =
        (None, None, None, None, None, None);
    for nla in NlasIterator::new(nest) {
        let nla = nla.ok()?;
        match nla.kind() & 0x3fff {
            CTA_TUPLE_IP => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let v = a.value();
                    let ip = match a.kind() & 0x3fff {
                        CTA_IP_V4_SRC | CTA_IP_V4_DST => {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v.get(..4)?).ok()?))
                        }
                        CTA_IP_V6_SRC | CTA_IP_V6_DST => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v.get(..16)?).ok()?))
                        }
                        _ => continue,
                    };
                    match a.kind() & 0x3fff {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        _ => dst = Some(ip),
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let v = a.value();
                    match a.kind() & 0x3fff {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(v),
                        CTA_PROTO_DST_PORT => dport = be16(v),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => id = be16(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto?;
    let (sport, dport) = match proto {
        6 | 17 | 132 | 33 | 136 => (sport?, dport?),
        1 | 58 => (id?, id?),
        _ => return None,
    };
    Some(Tuple {
        proto,
        src: src?,
        sport,
        dst: dst?,
        dport,
    })
}

/// Decode one IPCTNL_MSG_CT_NEW payload (nfgenmsg + attributes). None for what is not a
/// TCP/UDP/ICMP entry with both tuples; never panics on input.
pub(crate) fn decode_entry(payload: &[u8]) -> Option<CtFlow> {
    let attrs = payload.get(4..)?;
    let (mut original, mut reply) = (None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        match nla.kind() & 0x3fff {
            CTA_TUPLE_ORIG => original = tuple(nla.value()),
            CTA_TUPLE_REPLY => reply = tuple(nla.value()),
            _ => {}
        }
    }
    Some(CtFlow {
        original: original?,
        reply: reply?,
    })
}

/// Every entry in one datagram read from a ctnetlink socket (events or dump answers).
pub(crate) fn decode_datagram(buf: &[u8]) -> Vec<CtFlow> {
    crate::netns::rtnl::payloads_of_type(buf, CT_NEW)
        .into_iter()
        .filter_map(decode_entry)
        .collect()
}

/// A ctnetlink socket of one namespace: new and updated entries as they happen, after a dump
/// of the table as it was.
#[derive(Debug)]
pub(crate) struct CtEvents {
    socket: Socket,
    /// The namespace it listens in (set by the caller that opened it there).
    pub(crate) ns: Option<crate::netns::NsId>,
    /// A lost event (the buffer overflowed) asks for a new dump.
    pub(crate) needs_dump: bool,
}

impl CtEvents {
    /// Subscribe, then ask for the dump (in that order: no entry falls between the two). Call
    /// inside `NetNs::run`: the socket belongs to that namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // A big receive buffer: a burst of new flows must not overflow it (ENOBUFS).
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a valid fd and an int option value.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if forced != 0 {
            let _ = socket.set_rx_buf_sz(size as usize);
        }
        socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        socket.add_membership(NFNLGRP_CONNTRACK_UPDATE)?;
        socket.set_non_blocking(true)?;
        let mut s = CtEvents {
            socket,
            ns: None,
            needs_dump: false,
        };
        s.request_dump()?;
        Ok(s)
    }

    /// Ask the kernel for every entry (IPv4 and IPv6: family AF_UNSPEC).
    pub(crate) fn request_dump(&mut self) -> io::Result<()> {
        let mut req = Vec::with_capacity(20);
        req.extend_from_slice(&20u32.to_ne_bytes());
        req.extend_from_slice(&CT_GET.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        req.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // nfgenmsg, version 0
        self.socket.send_to(&req, &SocketAddr::new(0, 0), 0)?;
        self.needs_dump = false;
        Ok(())
    }

    /// The raw fd (for poll).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Every entry queued on the socket, without blocking. A full buffer (ENOBUFS: events were
    /// lost) is answered with a new dump.
    pub(crate) fn drain(&mut self, buf: &mut [u8], out: &mut Vec<CtFlow>) {
        loop {
            match self.socket.recv(&mut &mut *buf, 0) {
                Ok(0) => return,
                Ok(n) => out.extend(decode_datagram(&buf[..n])),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.needs_dump = true,
                Err(_) => break,
            }
        }
        if self.needs_dump {
            let _ = self.request_dump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(v);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn tuple_nest(src: [u8; 4], dst: [u8; 4], proto: u8, ports: Option<(u16, u16)>) -> Vec<u8> {
        let mut ip = nla(CTA_IP_V4_SRC, &src);
        ip.extend(nla(CTA_IP_V4_DST, &dst));
        let mut p = nla(CTA_PROTO_NUM, &[proto]);
        match ports {
            Some((s, d)) => {
                p.extend(nla(CTA_PROTO_SRC_PORT, &s.to_be_bytes()));
                p.extend(nla(CTA_PROTO_DST_PORT, &d.to_be_bytes()));
            }
            None => {
                p.extend(nla(CTA_PROTO_ICMP_ID, &77u16.to_be_bytes()));
                p.extend(nla(5, &[8]));
                p.extend(nla(6, &[0]));
            }
        }
        let mut t = nla(CTA_TUPLE_IP | 0x8000, &ip);
        t.extend(nla(CTA_TUPLE_PROTO | 0x8000, &p));
        t
    }

    #[test]
    fn a_dnat_event_gives_both_tuples_and_icmp_is_keyed_by_its_id() {
        let mut payload = vec![2u8, 0, 0, 0];
        payload.extend(nla(
            CTA_TUPLE_ORIG | 0x8000,
            &tuple_nest([172, 20, 0, 3], [172, 20, 0, 1], 6, Some((40000, 8080))),
        ));
        payload.extend(nla(
            CTA_TUPLE_REPLY | 0x8000,
            &tuple_nest([172, 19, 0, 2], [172, 19, 0, 1], 6, Some((80, 40000))),
        ));
        let e = decode_entry(&payload).unwrap();
        assert_eq!(
            e.original.to_string(),
            "tcp 172.20.0.3:40000 > 172.20.0.1:8080"
        );
        assert_eq!(e.reply.to_string(), "tcp 172.19.0.2:80 > 172.19.0.1:40000");
        assert!(e.natted());
        // The same in a netlink message, twice in one datagram.
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&CT_NEW.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&payload);
        let two = [msg.clone(), msg].concat();
        assert_eq!(decode_datagram(&two).len(), 2);

        let mut icmp = vec![2u8, 0, 0, 0];
        icmp.extend(nla(
            CTA_TUPLE_ORIG | 0x8000,
            &tuple_nest([10, 0, 0, 1], [10, 0, 0, 2], 1, None),
        ));
        icmp.extend(nla(
            CTA_TUPLE_REPLY | 0x8000,
            &tuple_nest([10, 0, 0, 2], [10, 0, 0, 1], 1, None),
        ));
        let e = decode_entry(&icmp).unwrap();
        assert_eq!(
            (e.original.proto, e.original.sport, e.original.dport),
            (1, 77, 77)
        );
        assert!(!e.natted());
    }

    #[test]
    fn garbage_is_no_entry() {
        assert!(decode_entry(&[]).is_none());
        assert!(decode_entry(&[2, 0, 0, 0, 200, 0, 1, 0]).is_none());
        assert!(decode_datagram(&[0xff; 40]).is_empty());
    }
}
