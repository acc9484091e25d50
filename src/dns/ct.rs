//! One conntrack entry looked up by its tuple over ctnetlink (IPCTNL_MSG_CT_GET), to tell
//! what a NAT in a namespace turned a DNS flow into: the same lookup seen before and after a
//! MASQUERADE or DNAT is then joined by the kernel's own record, never by a guess.
//!
//! The socket is made inside the namespace (through [`NetNs::run`]) and used from the capture
//! thread: a netlink socket keeps the namespace it was created in.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::packet::Transport;
use crate::netns::rtnl::{Netlink, NetlinkError};

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
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
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One direction of a conntrack entry: source to destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CtTuple {
    /// Where packets of this direction come from.
    pub src: SocketAddr,
    /// Where they go.
    pub dst: SocketAddr,
}

/// A ctnetlink message: our GET request, or the entry the kernel answers with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CtMessage {
    /// Look up the entry whose original (or reply) direction is this tuple.
    Get {
        /// The tuple.
        tuple: CtTuple,
        /// Search the reply direction instead of the original one.
        reply: bool,
        /// IPPROTO_UDP or IPPROTO_TCP.
        proto: u8,
    },
    /// An entry: its original and reply directions.
    Entry {
        /// As the first packet left its sender.
        orig: CtTuple,
        /// As replies travel (after NAT, the addresses the other side really uses).
        reply: CtTuple,
    },
    /// Anything else the kernel sent.
    Other,
}

fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn tuple_attr(t: &CtTuple, proto: u8) -> Vec<u8> {
    let mut ip = Vec::new();
    match (t.src.ip(), t.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            put_attr(&mut ip, CTA_IP_V6_SRC, &v6(s));
            put_attr(&mut ip, CTA_IP_V6_DST, &v6(d));
        }
    }
    let mut ports = Vec::new();
    put_attr(&mut ports, CTA_PROTO_NUM, &[proto]);
    put_attr(&mut ports, CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
    put_attr(&mut ports, CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
    let mut out = Vec::new();
    put_attr(&mut out, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut out, CTA_TUPLE_PROTO | NLA_F_NESTED, &ports);
    out
}

impl CtMessage {
    fn body(&self) -> Vec<u8> {
        let CtMessage::Get {
            tuple,
            reply,
            proto,
        } = self
        else {
            return Vec::new();
        };
        let family = if tuple.src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
        let mut out = vec![family as u8, 0, 0, 0];
        let kind = if *reply {
            CTA_TUPLE_REPLY
        } else {
            CTA_TUPLE_ORIG
        };
        put_attr(&mut out, kind | NLA_F_NESTED, &tuple_attr(tuple, *proto));
        out
    }
}

/// The attributes of a netlink attribute stream: (type without flags, payload). Stops at the
/// first malformed one (the kernel's messages are well formed; this never panics on input).
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        let next = (len + 3) & !3;
        data = &data[next.min(data.len())..];
    }
    out
}

fn parse_tuple(data: &[u8]) -> Option<CtTuple> {
    let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
    for (kind, v) in attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(v) {
                    let ip = match a.len() {
                        4 => <[u8; 4]>::try_from(a).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(a).ok().map(IpAddr::from),
                        _ => None,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(v) {
                    let port = <[u8; 2]>::try_from(a).ok().map(u16::from_be_bytes);
                    match k {
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(CtTuple {
        src: SocketAddr::new(src?, sport?),
        dst: SocketAddr::new(dst?, dport?),
    })
}

/// Why a ctnetlink message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("ctnetlink message too short")]
pub(crate) struct CtDecodeError;

impl NetlinkSerializable for CtMessage {
    fn message_type(&self) -> u16 {
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    }

    fn buffer_len(&self) -> usize {
        self.body().len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let body = self.body();
        let n = body.len().min(buffer.len());
        buffer[..n].copy_from_slice(&body[..n]);
    }
}

impl NetlinkDeserializable for CtMessage {
    type Error = CtDecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if header.message_type != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
            return Ok(CtMessage::Other);
        }
        let body = payload.get(4..).ok_or(CtDecodeError)?;
        let (mut orig, mut reply) = (None, None);
        for (kind, v) in attrs(body) {
            match kind {
                CTA_TUPLE_ORIG => orig = parse_tuple(v),
                CTA_TUPLE_REPLY => reply = parse_tuple(v),
                _ => {}
            }
        }
        Ok(match (orig, reply) {
            (Some(orig), Some(reply)) => CtMessage::Entry { orig, reply },
            _ => CtMessage::Other,
        })
    }
}

/// A ctnetlink socket in one namespace.
pub(crate) struct Conntrack {
    nl: Netlink,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conntrack")
    }
}

impl Conntrack {
    /// A socket in the calling thread's namespace.
    pub(crate) fn open_here() -> Result<Conntrack, NetlinkError> {
        Ok(Conntrack {
            nl: Netlink::open(NETLINK_NETFILTER)?,
        })
    }

    fn get(
        &mut self,
        tuple: CtTuple,
        reply: bool,
        transport: Transport,
    ) -> Option<(CtTuple, CtTuple)> {
        let proto = match transport {
            Transport::Udp => libc::IPPROTO_UDP,
            Transport::Tcp => libc::IPPROTO_TCP,
        } as u8;
        let msg = CtMessage::Get {
            tuple,
            reply,
            proto,
        };
        match self.nl.get(msg, "conntrack get") {
            Ok(replies) => replies.into_iter().find_map(|m| match m {
                CtMessage::Entry { orig, reply } => Some((orig, reply)),
                _ => None,
            }),
            Err(e) => {
                // ENOENT is the usual answer (no NAT, or no conntrack in this namespace).
                if e.errno() != Some(libc::ENOENT) {
                    tracing::debug!("conntrack get: {e}");
                }
                None
            }
        }
    }

    /// The other side of a NAT for a DNS flow `client -> server` as seen on the wire in this
    /// namespace: the (client, server) the same flow has after the NAT when this is the side
    /// before it, or before the NAT when this is the side after it. None without NAT.
    pub(crate) fn translated(
        &mut self,
        transport: Transport,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let seen = CtTuple {
            src: client,
            dst: server,
        };
        if let Some((orig, reply)) = self.get(seen, false, transport) {
            // Replies go reply.src -> reply.dst: the flow after NAT is reply.dst -> reply.src.
            let after = (reply.dst, reply.src);
            return (after != (orig.src, orig.dst)).then_some(after);
        }
        let as_reply = CtTuple {
            src: server,
            dst: client,
        };
        let (orig, reply) = self.get(as_reply, true, transport)?;
        let before = (orig.src, orig.dst);
        (before != (reply.dst, reply.src)).then_some(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_request_and_entry_round_trip() {
        let t = CtTuple {
            src: "172.20.0.2:5000".parse().unwrap(),
            dst: "10.53.0.1:53".parse().unwrap(),
        };
        let get = CtMessage::Get {
            tuple: t,
            reply: false,
            proto: 17,
        };
        let body = get.body();
        assert_eq!(body[0], libc::AF_INET as u8);
        let top = attrs(&body[4..]);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(top[0].1), Some(t));
        // The kernel's answer: the same layout under CTA_TUPLE_ORIG and CTA_TUPLE_REPLY.
        let reply = CtTuple {
            src: "10.53.0.1:53".parse().unwrap(),
            dst: "10.99.0.1:61000".parse().unwrap(),
        };
        let mut msg = vec![2u8, 0, 0, 0];
        put_attr(&mut msg, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple_attr(&t, 17));
        put_attr(
            &mut msg,
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple_attr(&reply, 17),
        );
        let mut h = NetlinkHeader::default();
        h.message_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        assert_eq!(
            CtMessage::deserialize(&h, &msg).unwrap(),
            CtMessage::Entry { orig: t, reply }
        );
        // IPv6 too.
        let t6 = CtTuple {
            src: "[fd00::2]:5000".parse().unwrap(),
            dst: "[fd53::1]:53".parse().unwrap(),
        };
        assert_eq!(parse_tuple(&tuple_attr(&t6, 6)), Some(t6));
        // Cut input never panics.
        for n in 0..msg.len() {
            let _ = CtMessage::deserialize(&h, &msg[..n]);
        }
    }
}
