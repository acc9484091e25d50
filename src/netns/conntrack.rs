//! Conntrack over ctnetlink, the one decoder of its entries: a request socket (look one entry up
//! by its tuple, dump the table) and an event socket (new and updated entries as they happen).
//! dns joins a lookup across a NAT with it, capture --follow keys its flows by it, trace names
//! the NAT a packet went through.
//!
//! Sockets are made inside the namespace (through [`super::NetNs::run`]) and used from any
//! thread afterwards: a netlink socket keeps the namespace it was created in. Every entry is
//! read with its own tuples; nothing here parses `conntrack -L` text.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, NlasIterator,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::Socket;
use serde::{Deserialize, Serialize};

use super::rtnl::{Netlink, NetlinkError};
use super::NsId;

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// IPCTNL_MSG_CT_NEW: events of new and updated entries, and dump or GET answers alike.
const CT_NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8;
/// IPCTNL_MSG_CT_GET.
const CT_GET: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | 1;
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;

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
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// One direction of a conntrack entry. ICMP echo is keyed by its id in both port fields (what
/// conntrack does: the id is the flow's identity, the type only says the direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Tuple {
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port (ICMP: the echo id).
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (ICMP: the echo id).
    pub dport: u16,
}

impl Tuple {
    /// A TCP/UDP (or ICMP, with the id as both ports) tuple from two socket addresses.
    pub(crate) fn new(proto: u8, src: SocketAddr, dst: SocketAddr) -> Tuple {
        Tuple {
            proto,
            src: src.ip(),
            sport: src.port(),
            dst: dst.ip(),
            dport: dst.port(),
        }
    }

    /// The same flow seen the other way round.
    pub(crate) fn reversed(self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }

    /// The source as a socket address.
    pub(crate) fn src_addr(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.sport)
    }

    /// The destination as a socket address.
    pub(crate) fn dst_addr(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dport)
    }

    fn is_icmp(&self) -> bool {
        matches!(self.proto, ICMP | ICMPV6)
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            ICMP => "icmp".to_string(),
            ICMPV6 => "icmp6".to_string(),
            n => format!("proto {n}"),
        };
        if self.is_icmp() {
            return write!(f, "{p} {} > {} id {}", self.src, self.dst, self.sport);
        }
        write!(f, "{p} {} > {}", self.src_addr(), self.dst_addr())
    }
}

/// A TCP entry's state as conntrack tracks it (linux/netfilter/nf_conntrack_tcp.h), named as
/// `conntrack -L` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum TcpState {
    /// No state yet.
    None,
    /// SYN seen, no answer yet.
    SynSent,
    /// SYN answered with SYN-ACK.
    SynRecv,
    /// Both sides talk.
    Established,
    /// A FIN was seen.
    FinWait,
    /// The other side sent its FIN.
    CloseWait,
    /// Waiting for the last ACK.
    LastAck,
    /// Closed; the entry lingers.
    TimeWait,
    /// Closed by a RST.
    Close,
    /// A simultaneous open (SYN_SENT2, printed as LISTEN by older tools).
    SynSent2,
}

impl TcpState {
    fn from_kernel(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            0 => None,
            1 => SynSent,
            2 => SynRecv,
            3 => Established,
            4 => FinWait,
            5 => CloseWait,
            6 => LastAck,
            7 => TimeWait,
            8 => Close,
            9 => SynSent2,
            _ => return Option::None,
        })
    }

    /// The name `conntrack -L` prints.
    pub(crate) fn as_str(self) -> &'static str {
        use TcpState::*;
        match self {
            None => "NONE",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            Established => "ESTABLISHED",
            FinWait => "FIN_WAIT",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            SynSent2 => "SYN_SENT2",
        }
    }
}

/// A conntrack entry: the tuple as the first packet left its sender, and the reply tuple as
/// replies travel (after NAT, the addresses the other side really uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// As the client sent it.
    pub original: Tuple,
    /// As the server answers (its source is the DNAT target, its destination the SNAT source).
    pub reply: Tuple,
    /// A TCP entry's state (None for other protocols, or when the kernel did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_state: Option<TcpState>,
}

impl Entry {
    /// NAT changed the flow (the reply is not the original reversed).
    pub(crate) fn natted(&self) -> bool {
        self.reply != self.original.reversed()
    }
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// One CTA_TUPLE_* nest. None for what is not a TCP/UDP/SCTP/DCCP/UDPLite or ICMP echo tuple.
fn decode_tuple(nest: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport, mut id) =
        (None, None, None, None, None, None);
    for nla in NlasIterator::new(nest) {
        let nla = nla.ok()?;
        match nla.kind() & NLA_TYPE_MASK {
            CTA_TUPLE_IP => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let v = a.value();
                    let ip = match a.kind() & NLA_TYPE_MASK {
                        CTA_IP_V4_SRC | CTA_IP_V4_DST => {
                            IpAddr::from(<[u8; 4]>::try_from(v.get(..4)?).ok()?)
                        }
                        CTA_IP_V6_SRC | CTA_IP_V6_DST => {
                            IpAddr::from(<[u8; 16]>::try_from(v.get(..16)?).ok()?)
                        }
                        _ => continue,
                    };
                    match a.kind() & NLA_TYPE_MASK {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        _ => dst = Some(ip),
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in NlasIterator::new(nla.value()) {
                    let a = a.ok()?;
                    let v = a.value();
                    match a.kind() & NLA_TYPE_MASK {
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
        ICMP | ICMPV6 => (id?, id?),
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

/// Decode one IPCTNL_MSG_CT_NEW payload (nfgenmsg + attributes). None for what is not an entry
/// with both tuples of a protocol [`Tuple`] holds; never panics on input.
pub(crate) fn decode_entry(payload: &[u8]) -> Option<Entry> {
    let attrs = payload.get(4..)?;
    let (mut original, mut reply, mut tcp_state) = (None, None, None);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        match nla.kind() & NLA_TYPE_MASK {
            CTA_TUPLE_ORIG => original = decode_tuple(nla.value()),
            CTA_TUPLE_REPLY => reply = decode_tuple(nla.value()),
            CTA_PROTOINFO => tcp_state = decode_tcp_state(nla.value()),
            _ => {}
        }
    }
    Some(Entry {
        original: original?,
        reply: reply?,
        tcp_state,
    })
}

/// CTA_PROTOINFO's TCP state (CTA_PROTOINFO_TCP / CTA_PROTOINFO_TCP_STATE, one byte).
fn decode_tcp_state(nest: &[u8]) -> Option<TcpState> {
    let tcp = NlasIterator::new(nest)
        .filter_map(Result::ok)
        .find(|n| n.kind() & NLA_TYPE_MASK == CTA_PROTOINFO_TCP)?;
    let state = NlasIterator::new(tcp.value())
        .filter_map(Result::ok)
        .find(|n| n.kind() & NLA_TYPE_MASK == CTA_PROTOINFO_TCP_STATE)?;
    TcpState::from_kernel(*state.value().first()?)
}

/// Every entry in one datagram read from a ctnetlink socket (events or dump answers).
pub(crate) fn decode_datagram(buf: &[u8]) -> Vec<Entry> {
    super::rtnl::payloads_of_type(buf, CT_NEW)
        .into_iter()
        .filter_map(decode_entry)
        .collect()
}

fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// A CTA_TUPLE_* nest's content for `t`. ICMP echo needs its type too: a request in the
/// original direction, a reply in the reply direction.
fn encode_tuple(t: &Tuple, reply_direction: bool) -> Vec<u8> {
    let mut ip = Vec::new();
    match (t.src, t.dst) {
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
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[t.proto]);
    match t.proto {
        ICMP => {
            put_attr(&mut proto, CTA_PROTO_ICMP_ID, &t.sport.to_be_bytes());
            put_attr(
                &mut proto,
                CTA_PROTO_ICMP_TYPE,
                &[if reply_direction { 0 } else { 8 }],
            );
            put_attr(&mut proto, CTA_PROTO_ICMP_CODE, &[0]);
        }
        ICMPV6 => {
            put_attr(&mut proto, CTA_PROTO_ICMPV6_ID, &t.sport.to_be_bytes());
            let kind = if reply_direction { 129 } else { 128 };
            put_attr(&mut proto, CTA_PROTO_ICMPV6_TYPE, &[kind]);
            put_attr(&mut proto, CTA_PROTO_ICMPV6_CODE, &[0]);
        }
        _ => {
            put_attr(&mut proto, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            put_attr(&mut proto, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        }
    }
    let mut out = Vec::new();
    put_attr(&mut out, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut out, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    out
}

/// A ctnetlink message: a request we send, or what the kernel answers with.
#[derive(Debug, Clone, PartialEq)]
enum CtMessage {
    /// Look up the entry whose original (or reply) direction is this tuple.
    Get {
        /// The tuple.
        tuple: Tuple,
        /// Search the reply direction instead of the original one.
        reply_direction: bool,
    },
    /// Every entry of both families (sent with NLM_F_DUMP).
    Dump,
    /// An entry the kernel sent.
    Entry(Entry),
    /// Anything else the kernel sent (an entry of another protocol, a delete event).
    Other,
}

impl CtMessage {
    fn body(&self) -> Vec<u8> {
        match self {
            CtMessage::Get {
                tuple,
                reply_direction,
            } => {
                let family = if tuple.src.is_ipv4() && tuple.dst.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
                let mut out = vec![family as u8, 0, 0, 0];
                let kind = if *reply_direction {
                    CTA_TUPLE_REPLY
                } else {
                    CTA_TUPLE_ORIG
                };
                put_attr(
                    &mut out,
                    kind | NLA_F_NESTED,
                    &encode_tuple(tuple, *reply_direction),
                );
                out
            }
            // AF_UNSPEC: IPv4 and IPv6 entries in one dump.
            CtMessage::Dump => vec![libc::AF_UNSPEC as u8, 0, 0, 0],
            CtMessage::Entry(_) | CtMessage::Other => Vec::new(),
        }
    }
}

/// Why a ctnetlink message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("ctnetlink message too short")]
pub(crate) struct CtDecodeError;

impl NetlinkSerializable for CtMessage {
    fn message_type(&self) -> u16 {
        CT_GET
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
        if header.message_type != CT_NEW {
            return Ok(CtMessage::Other);
        }
        if payload.len() < 4 {
            return Err(CtDecodeError);
        }
        Ok(decode_entry(payload).map_or(CtMessage::Other, CtMessage::Entry))
    }
}

/// A ctnetlink request socket in one namespace: look entries up, dump the table.
pub(crate) struct Conntrack {
    nl: Netlink,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conntrack")
    }
}

impl Conntrack {
    /// A socket in the calling thread's namespace (call inside `NetNs::run` for another one).
    pub(crate) fn open_here() -> Result<Conntrack, NetlinkError> {
        Ok(Conntrack {
            nl: Netlink::open(NETLINK_NETFILTER)?,
        })
    }

    /// The entry whose original direction (or, with `reply_direction`, reply direction) is
    /// `tuple`. None when there is none (ENOENT: no such flow, or no conntrack in this namespace).
    pub(crate) fn get(
        &mut self,
        tuple: Tuple,
        reply_direction: bool,
    ) -> Result<Option<Entry>, NetlinkError> {
        let msg = CtMessage::Get {
            tuple,
            reply_direction,
        };
        match self.nl.get(msg, "conntrack get") {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                CtMessage::Entry(e) => Some(e),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every entry of this namespace, IPv4 and IPv6, in one netlink dump.
    pub(crate) fn dump(&mut self) -> Result<Vec<Entry>, NetlinkError> {
        Ok(self
            .nl
            .dump(CtMessage::Dump, "conntrack dump")?
            .into_iter()
            .filter_map(|m| match m {
                CtMessage::Entry(e) => Some(e),
                _ => None,
            })
            .collect())
    }

    /// The other side of a NAT for a flow seen on the wire in this namespace as `seen`: the
    /// tuple the same packet has after the NAT when `seen` is the side before it, or before the
    /// NAT when `seen` is the side after it. None without NAT (or without an entry).
    pub(crate) fn translated(&mut self, seen: Tuple) -> Option<Tuple> {
        let found = |r: Result<Option<Entry>, NetlinkError>| match r {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("conntrack get: {e}");
                None
            }
        };
        if let Some(e) = found(self.get(seen, false)) {
            // Replies go reply.src -> reply.dst: the packet after NAT is the reply reversed.
            let after = e.reply.reversed();
            return (after != e.original).then_some(after);
        }
        // The side after the NAT, reversed, is the reply direction.
        let e = found(self.get(seen.reversed(), true))?;
        (e.original != seen).then_some(e.original)
    }
}

/// A ctnetlink event socket of one namespace: new and updated entries as they happen, after a
/// dump of the table as it was. An event is queued in the same softirq that passes the packet
/// on, so an entry is known before a capture ring hands over the block holding that packet.
#[derive(Debug)]
pub(crate) struct Events {
    socket: Socket,
    /// The namespace it listens in (set by the caller that opened it there).
    pub(crate) ns: Option<NsId>,
    /// A lost event (the buffer overflowed) asks for a new dump.
    pub(crate) needs_dump: bool,
}

impl Events {
    /// Subscribe, then ask for the dump (in that order: no entry falls between the two). Call
    /// inside `NetNs::run`: the socket belongs to that namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        crate::netns::rtnl::grow_receive_buffer(&mut socket, 8 << 20);
        socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        socket.add_membership(NFNLGRP_CONNTRACK_UPDATE)?;
        socket.set_non_blocking(true)?;
        let mut s = Events {
            socket,
            ns: None,
            needs_dump: false,
        };
        s.request_dump()?;
        Ok(s)
    }

    /// Ask the kernel for every entry (IPv4 and IPv6); the answers arrive with the events.
    pub(crate) fn request_dump(&mut self) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP;
        header.sequence_number = 1;
        let mut msg = netlink_packet_core::NetlinkMessage::new(
            header,
            netlink_packet_core::NetlinkPayload::InnerMessage(CtMessage::Dump),
        );
        msg.finalize();
        let mut req = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut req);
        self.socket
            .send_to(&req, &netlink_sys::SocketAddr::new(0, 0), 0)?;
        self.needs_dump = false;
        Ok(())
    }

    /// The raw fd (for poll).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Every entry queued on the socket, without blocking. A full buffer (ENOBUFS: events were
    /// lost) is answered with a new dump.
    pub(crate) fn drain(&mut self, buf: &mut [u8], out: &mut Vec<Entry>) {
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

    /// captures/conntrack/dump-nat.hex: one netlink message a line, as the kernel sent them.
    fn recorded() -> Vec<Vec<u8>> {
        let text = include_str!("../../captures/conntrack/dump-nat.hex");
        text.lines()
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    fn t(proto: u8, src: &str, dst: &str) -> Tuple {
        Tuple::new(proto, src.parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn a_recorded_dump_decodes_to_its_entries() {
        let msgs = recorded();
        let all: Vec<Entry> = msgs.iter().flat_map(|m| decode_datagram(m)).collect();
        // One datagram holding all four decodes to the same.
        assert_eq!(decode_datagram(&msgs.concat()), all);
        let shown: Vec<String> = all
            .iter()
            .map(|e| format!("{} ; {}", e.original, e.reply))
            .collect();
        assert_eq!(
            shown,
            [
                "icmp 10.9.0.1 > 10.9.0.2 id 1234 ; icmp 10.9.0.2 > 10.9.0.1 id 1234",
                "icmp6 fd09::1 > fd09::2 id 1234 ; icmp6 fd09::2 > fd09::1 id 1234",
                "udp 10.9.0.1:33333 > 10.9.0.99:53 ; udp 10.9.0.2:5353 > 10.9.0.1:40000",
                "tcp [fd09::1]:44445 > [fd09::2]:8080 ; tcp [fd09::2]:8080 > [fd09::1]:44445",
            ]
        );
        let natted: Vec<bool> = all.iter().map(Entry::natted).collect();
        assert_eq!(natted, [false, false, true, false]);
        // Cut anywhere, a message never panics the decoder.
        for m in &msgs {
            for n in 0..m.len() {
                let _ = decode_datagram(&m[..n]);
                let _ = decode_entry(m.get(16..n).unwrap_or(&[]));
            }
        }
    }

    #[test]
    fn a_get_request_carries_the_tuple_the_decoder_reads_back() {
        for (tuple, reply_direction) in [
            (t(17, "172.20.0.2:5000", "10.53.0.1:53"), false),
            (t(6, "[fd00::2]:5000", "[fd53::1]:53"), true),
            (t(ICMP, "10.0.0.1:77", "10.0.0.2:77"), false),
            (t(ICMPV6, "[fd00::1]:77", "[fd00::2]:77"), true),
        ] {
            let body = CtMessage::Get {
                tuple,
                reply_direction,
            }
            .body();
            let family = if tuple.src.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            assert_eq!(body[0], family as u8);
            let top: Vec<_> = NlasIterator::new(&body[4..]).map(|n| n.unwrap()).collect();
            assert_eq!(top.len(), 1);
            let want = if reply_direction {
                CTA_TUPLE_REPLY
            } else {
                CTA_TUPLE_ORIG
            };
            assert_eq!(top[0].kind() & NLA_TYPE_MASK, want);
            assert_eq!(decode_tuple(top[0].value()), Some(tuple));
        }
        // An ICMP echo request is looked up as type 8 in the original direction, 0 in the reply.
        let types = |reply_direction| {
            let nest = encode_tuple(&t(ICMP, "10.0.0.1:9", "10.0.0.2:9"), reply_direction);
            let needle = [5u8, 0, CTA_PROTO_ICMP_TYPE as u8, 0];
            let at = nest.windows(4).position(|w| w == needle).unwrap();
            nest[at + 4]
        };
        assert_eq!((types(false), types(true)), (8, 0));
    }

    /// A throwaway namespace (removed on drop, panic included).
    struct Scratch(String, crate::netns::NetNs);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = crate::netns::named::delete(&self.0);
        }
    }

    /// An ICMP echo request with this id, from a raw socket made in the calling thread's
    /// namespace (conntrack makes an entry keyed by the id; lo answers it).
    fn ping(to: std::net::Ipv4Addr, id: u16) {
        let mut pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'n', b't'];
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        let mut sum: u32 = pkt
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
            .sum();
        sum = (sum >> 16) + (sum & 0xffff);
        sum += sum >> 16;
        pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        // SAFETY: a raw socket, one sendto of a local buffer with a valid sockaddr_in, close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(to.octets()),
                },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(n, pkt.len() as isize, "{}", io::Error::last_os_error());
            libc::close(fd);
        }
    }

    #[test]
    fn a_live_dnat_is_dumped_looked_up_and_translated_both_ways() {
        let name = format!("nt-test-ct-{}", std::process::id());
        let ns = crate::netns::named::create(&name).expect("create a namespace (root)");
        let scratch = Scratch(name.clone(), ns);
        // DNAT in OUTPUT turns udp to 127.0.0.1:9 into 127.0.0.1:5353.
        let rules = "table ip t { chain out { type nat hook output priority -100; \
                     ip daddr 127.0.0.1 udp dport 9 dnat to 127.0.0.1:5353; }; }";
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "nft", rules])
            .status()
            .expect("ip netns exec nft");
        assert!(st.success());
        let (client, entries, got, after, before, echo) = scratch
            .1
            .run(|| {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.send_to(b"q", "127.0.0.1:9").unwrap();
                ping(std::net::Ipv4Addr::LOCALHOST, 4321);
                let client = sock.local_addr().unwrap();
                let mut ct = Conntrack::open_here().unwrap();
                let entries = ct.dump().unwrap();
                let seen = t(17, &client.to_string(), "127.0.0.1:9");
                let got = ct.get(seen, false).unwrap();
                let after = ct.translated(seen);
                let before = after.and_then(|a| ct.translated(a));
                let echo = ct
                    .get(t(ICMP, "127.0.0.1:4321", "127.0.0.1:4321"), false)
                    .unwrap();
                (client, entries, got, after, before, echo)
            })
            .unwrap();
        let seen = t(17, &client.to_string(), "127.0.0.1:9");
        let dnatted = t(17, &client.to_string(), "127.0.0.1:5353");
        let entry = Entry {
            original: seen,
            reply: dnatted.reversed(),
            tcp_state: None,
        };
        assert!(entries.contains(&entry), "{entries:?}");
        assert_eq!(got, Some(entry));
        assert_eq!(after, Some(dnatted), "the packet after the DNAT");
        assert_eq!(before, Some(seen), "and back from the far side");
        let echo = echo.expect("the echo's entry, looked up by its id");
        assert_eq!(
            echo.original.to_string(),
            "icmp 127.0.0.1 > 127.0.0.1 id 4321"
        );
        assert!(entries.contains(&echo), "{entries:?}");
        // No entry: none, not an error.
        let none = scratch
            .1
            .run(|| {
                let mut ct = Conntrack::open_here().unwrap();
                ct.get(t(6, "127.0.0.1:1", "127.0.0.1:2"), false).unwrap()
            })
            .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn a_live_tcp_entry_is_dumped_with_its_state() {
        let name = format!("nt-test-cttcp-{}", std::process::id());
        let ns = crate::netns::named::create(&name).expect("create a namespace (root)");
        let scratch = Scratch(name.clone(), ns);
        // A rule that needs conntrack: a namespace tracks nothing until one does.
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "nft"])
            .arg("table ip t { chain in { type filter hook input priority 0; ct state established accept; }; }")
            .status()
            .expect("ip netns exec nft");
        assert!(st.success());
        let (client, server, entries) = scratch
            .1
            .run(|| {
                let lo = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status();
                assert!(lo.is_ok_and(|s| s.success()));
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (_s, _) = l.accept().unwrap();
                let entries = Conntrack::open_here().unwrap().dump().unwrap();
                (c.local_addr().unwrap(), l.local_addr().unwrap(), entries)
            })
            .unwrap();
        let e = entries
            .iter()
            .find(|e| e.original == Tuple::new(6, client, server))
            .unwrap_or_else(|| panic!("no entry for {client} -> {server}: {entries:?}"));
        assert_eq!(e.tcp_state, Some(TcpState::Established), "{e:?}");
        assert_eq!(e.reply, Tuple::new(6, server, client));
        // The snapshot's reader keeps it, typed, and it survives a save and a load.
        let snap = crate::facts::conntrack::read(&scratch.1).expect("the snapshot's dump");
        let tcp = snap
            .iter()
            .find(|c| c.sport == Some(client.port()) && c.dport == Some(server.port()))
            .expect("the TCP entry in the snapshot");
        // Both sockets are closed by now: a closing state (TIME_WAIT), named as conntrack does.
        let state = tcp.tcp_state.expect("a TCP state");
        assert_ne!(state, TcpState::Established);
        assert!(
            tcp.text
                .starts_with(&format!("tcp {} src=127.0.0.1", state.as_str())),
            "{}",
            tcp.text
        );
        let back: Vec<crate::facts::CtEntry> =
            serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
    }

    #[test]
    fn garbage_is_no_entry() {
        assert!(decode_entry(&[]).is_none());
        assert!(decode_entry(&[2, 0, 0, 0, 200, 0, 1, 0]).is_none());
        assert!(decode_datagram(&[0xff; 40]).is_empty());
    }
}
