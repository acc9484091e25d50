//! From captured frames to DNS messages: link/IP/UDP/TCP decoding, copy suppression and
//! reassembly of DNS-over-TCP (two-byte length prefix, messages split across segments).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

/// The transport a DNS message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One message per datagram.
    Udp,
    /// Length-prefixed messages in a stream.
    Tcp,
}

impl Transport {
    /// "udp" or "tcp".
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What a captured frame starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// The IP header (AF_PACKET SOCK_DGRAM, pcap LINKTYPE_RAW / IPV4 / IPV6).
    Ip,
    /// An Ethernet II header (VLAN tags allowed).
    Ethernet,
    /// Linux cooked capture v1 (16-byte header, `tcpdump -i any` before libpcap 1.10).
    LinuxSll,
    /// Linux cooked capture v2 (20-byte header, `tcpdump -i any` today).
    LinuxSll2,
    /// BSD loopback: a 4-byte address family first (LINKTYPE_NULL / LOOP).
    Null,
}

/// One decoded TCP or UDP segment that may carry DNS.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// TCP only: sequence number and flags.
    pub tcp: Option<TcpFlags>,
    /// The transport payload.
    pub payload: &'a [u8],
}

/// The TCP header fields reassembly needs.
#[derive(Debug, Clone, Copy)]
pub struct TcpFlags {
    /// Sequence number of the first payload byte (of the SYN itself when `syn`).
    pub seq: u32,
    /// SYN set.
    pub syn: bool,
    /// FIN set.
    pub fin: bool,
    /// RST set.
    pub rst: bool,
}

/// Decode a frame down to its UDP/TCP payload; `None` for anything else (ARP, ICMP, fragments).
pub fn decode(link: LinkKind, data: &[u8]) -> Option<Segment<'_>> {
    let sliced = match link {
        LinkKind::Ip => SlicedPacket::from_ip(data).ok()?,
        LinkKind::Ethernet => SlicedPacket::from_ethernet(data).ok()?,
        LinkKind::LinuxSll => SlicedPacket::from_ip(data.get(16..)?).ok()?,
        LinkKind::LinuxSll2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        LinkKind::Null => SlicedPacket::from_ip(data.get(4..)?).ok()?,
    };
    let (sip, dip): (IpAddr, IpAddr) = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => {
            if v4.payload().fragmented {
                return None;
            }
            (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(v6) => {
            if v6.payload().fragmented {
                return None;
            }
            (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            )
        }
        NetSlice::Arp(_) => return None,
    };
    match sliced.transport? {
        TransportSlice::Udp(u) => Some(Segment {
            src: SocketAddr::new(sip, u.source_port()),
            dst: SocketAddr::new(dip, u.destination_port()),
            transport: Transport::Udp,
            tcp: None,
            payload: u.payload(),
        }),
        TransportSlice::Tcp(t) => Some(Segment {
            src: SocketAddr::new(sip, t.source_port()),
            dst: SocketAddr::new(dip, t.destination_port()),
            transport: Transport::Tcp,
            tcp: Some(TcpFlags {
                seq: t.sequence_number(),
                syn: t.syn(),
                fin: t.fin(),
                rst: t.rst(),
            }),
            payload: t.payload(),
        }),
        _ => None,
    }
}

/// An ICMP "destination unreachable" about a DNS datagram: the query bounced.
#[derive(Debug, Clone)]
pub struct Unreachable<'a> {
    /// The original sender (the client).
    pub src: SocketAddr,
    /// The original destination (the server that could not be reached).
    pub dst: SocketAddr,
    /// What the ICMP error said ("port unreachable", "host unreachable"...).
    pub reason: &'static str,
    /// The start of the original DNS message (as much as the error quoted).
    pub payload: &'a [u8],
}

fn reason_v4(code: u8) -> &'static str {
    match code {
        0 => "net unreachable",
        1 => "host unreachable",
        3 => "port unreachable",
        9 | 10 | 13 => "administratively prohibited",
        _ => "unreachable",
    }
}

fn reason_v6(code: u8) -> &'static str {
    match code {
        0 => "no route",
        1 => "administratively prohibited",
        3 => "address unreachable",
        4 => "port unreachable",
        5 | 6 => "rejected by policy",
        _ => "unreachable",
    }
}

/// The quoted datagram inside an ICMP error: (src, dst, DNS bytes) when it was UDP.
fn quoted_udp(inner: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let version = inner.first()? >> 4;
    let (sip, dip, udp): (IpAddr, IpAddr, &[u8]) = match version {
        4 => {
            let ihl = ((inner[0] & 0x0f) as usize) * 4;
            if ihl < 20 || *inner.get(9)? != 17 {
                return None;
            }
            let src: [u8; 4] = inner.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
            (src.into(), dst.into(), inner.get(ihl..)?)
        }
        6 => {
            if *inner.get(6)? != 17 {
                return None;
            }
            let src: [u8; 16] = inner.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), inner.get(40..)?)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    Some((
        SocketAddr::new(sip, sport),
        SocketAddr::new(dip, dport),
        udp.get(8..).unwrap_or_default(),
    ))
}

/// Decode an ICMP/ICMPv6 destination-unreachable error quoting a UDP datagram.
pub fn decode_unreachable(link: LinkKind, data: &[u8]) -> Option<Unreachable<'_>> {
    let sliced = match link {
        LinkKind::Ip => SlicedPacket::from_ip(data).ok()?,
        LinkKind::Ethernet => SlicedPacket::from_ethernet(data).ok()?,
        LinkKind::LinuxSll => SlicedPacket::from_ip(data.get(16..)?).ok()?,
        LinkKind::LinuxSll2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        LinkKind::Null => SlicedPacket::from_ip(data.get(4..)?).ok()?,
    };
    let (icmp, reason): (&[u8], fn(u8) -> &'static str) = match sliced.transport? {
        TransportSlice::Icmpv4(i) if i.slice().first() == Some(&3) => (i.slice(), reason_v4),
        TransportSlice::Icmpv6(i) if i.slice().first() == Some(&1) => (i.slice(), reason_v6),
        _ => return None,
    };
    let (src, dst, payload) = quoted_udp(icmp.get(8..)?)?;
    Some(Unreachable {
        src,
        dst,
        reason: reason(*icmp.get(1)?),
        payload,
    })
}

/// Drops the second and later copies of one datagram: a packet crossing a bridge is seen on
/// the veth, on the bridge and on the next port, all within microseconds. A real retry comes
/// hundreds of milliseconds later, so a short window separates the two.
#[derive(Debug, Default)]
pub struct CopyFilter {
    seen: HashMap<u64, Duration>,
    last_prune: Duration,
}

/// How close two identical datagrams must be to count as copies of one packet.
pub const COPY_WINDOW: Duration = Duration::from_millis(50);

impl CopyFilter {
    /// True when this datagram is new (not a copy seen within [`COPY_WINDOW`]).
    pub fn is_new(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let mut h = DefaultHasher::new();
        (src, dst, payload).hash(&mut h);
        let key = h.finish();
        if ts.saturating_sub(self.last_prune) > Duration::from_secs(1) {
            self.seen
                .retain(|_, t| ts.saturating_sub(*t) <= COPY_WINDOW);
            self.last_prune = ts;
        }
        match self.seen.insert(key, ts) {
            Some(prev) => ts.saturating_sub(prev) > COPY_WINDOW,
            None => true,
        }
    }
}

/// One direction of a TCP connection being reassembled.
#[derive(Debug, Default)]
struct Flow {
    next_seq: Option<u32>,
    buf: Vec<u8>,
    out_of_order: BTreeMap<u32, Vec<u8>>,
    last: Duration,
}

/// Largest buffered stream data per direction before the flow is given up (one DNS message
/// is at most 65535 bytes plus its prefix).
const MAX_FLOW_BUF: usize = 2 * 65_537;
/// Most out-of-order segments kept per direction.
const MAX_OUT_OF_ORDER: usize = 64;
/// A flow with no traffic for this long is forgotten.
const FLOW_IDLE: Duration = Duration::from_secs(60);

/// Reassembles DNS messages from TCP segments, per direction (src, dst).
#[derive(Debug, Default)]
pub struct TcpReassembler {
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    last_prune: Duration,
}

impl TcpReassembler {
    /// Feed one segment; returns the DNS messages it completed, in order.
    pub fn push(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        flags: TcpFlags,
        payload: &[u8],
    ) -> Vec<Vec<u8>> {
        if ts.saturating_sub(self.last_prune) > Duration::from_secs(5) {
            self.flows
                .retain(|_, f| ts.saturating_sub(f.last) <= FLOW_IDLE);
            self.last_prune = ts;
        }
        let key = (src, dst);
        let mut done = Vec::new();
        if flags.syn {
            // A new connection (or a retransmitted SYN): start clean.
            let flow = self.flows.entry(key).or_default();
            *flow = Flow {
                next_seq: Some(flags.seq.wrapping_add(1)),
                last: ts,
                ..Flow::default()
            };
            return done;
        }
        if payload.is_empty() && !flags.fin && !flags.rst {
            return done;
        }
        let flow = self.flows.entry(key).or_default();
        flow.last = ts;
        // Joined mid-stream: trust the first data segment seen.
        let next = *flow.next_seq.get_or_insert(flags.seq);
        let diff = flags.seq.wrapping_sub(next) as i32;
        if diff < 0 {
            // Retransmission or a second copy of the segment: keep only bytes not seen yet.
            let skip = diff.unsigned_abs() as usize;
            if skip < payload.len() {
                flow.buf.extend_from_slice(&payload[skip..]);
                flow.next_seq = Some(next.wrapping_add((payload.len() - skip) as u32));
            }
        } else if diff == 0 {
            flow.buf.extend_from_slice(payload);
            flow.next_seq = Some(next.wrapping_add(payload.len() as u32));
        } else if flow.out_of_order.len() < MAX_OUT_OF_ORDER && !payload.is_empty() {
            flow.out_of_order.insert(flags.seq, payload.to_vec());
        }
        // Segments that now fit.
        while let Some(next) = flow.next_seq {
            let Some((&seq, _)) = flow
                .out_of_order
                .iter()
                .find(|(s, _)| (s.wrapping_sub(next) as i32) <= 0)
            else {
                break;
            };
            let data = flow.out_of_order.remove(&seq).unwrap_or_default();
            let skip = next.wrapping_sub(seq) as usize;
            if skip < data.len() {
                flow.buf.extend_from_slice(&data[skip..]);
                flow.next_seq = Some(next.wrapping_add((data.len() - skip) as u32));
            }
        }
        // Complete length-prefixed messages.
        let mut used = 0;
        while flow.buf.len() - used >= 2 {
            let len = u16::from_be_bytes([flow.buf[used], flow.buf[used + 1]]) as usize;
            if flow.buf.len() - used < 2 + len {
                break;
            }
            done.push(flow.buf[used + 2..used + 2 + len].to_vec());
            used += 2 + len;
        }
        flow.buf.drain(..used);
        if flow.buf.len() > MAX_FLOW_BUF || flags.fin || flags.rst {
            self.flows.remove(&key);
        }
        done
    }
}

/// One fuzz input through the capture-side DNS decoding (the cargo-fuzz target `dns_packet`):
/// the first byte picks the link kind, the rest is a frame: decoded down to its transport
/// payload, an ICMP unreachable's quoted datagram, and the DNS message in either. No input may
/// panic.
pub fn fuzz_one(data: &[u8]) {
    let Some((&k, frame)) = data.split_first() else {
        return;
    };
    let link = match k % 5 {
        0 => LinkKind::Ip,
        1 => LinkKind::Ethernet,
        2 => LinkKind::LinuxSll,
        3 => LinkKind::LinuxSll2,
        _ => LinkKind::Null,
    };
    if let Some(seg) = decode(link, frame) {
        let _ = crate::tap::l7::dns::decode(seg.payload);
        if seg.payload.len() > 2 {
            let _ = crate::tap::l7::dns::decode(&seg.payload[2..]);
        }
    }
    let _ = decode_unreachable(link, frame);
    let _ = crate::tap::l7::dns::decode(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: u32) -> TcpFlags {
        TcpFlags {
            seq,
            syn: false,
            fin: false,
            rst: false,
        }
    }

    #[test]
    fn reassembles_split_and_reordered_messages() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:53".parse().unwrap();
        let mut r = TcpReassembler::default();
        let t = Duration::from_secs(1);
        let syn = TcpFlags { syn: true, ..f(99) };
        assert!(r.push(t, a, b, syn, &[]).is_empty());
        // Two messages: [0,3,1,2,3] and [0,1,9]; the second segment arrives first.
        let stream = [0u8, 3, 1, 2, 3, 0, 1, 9];
        assert!(r.push(t, a, b, f(104), &stream[4..]).is_empty());
        let got = r.push(t, a, b, f(100), &stream[..4]);
        assert_eq!(got, vec![vec![1, 2, 3], vec![9]]);
        // A retransmission yields nothing new.
        assert!(r.push(t, a, b, f(100), &stream[..4]).is_empty());
    }

    #[test]
    fn copies_are_dropped_retries_are_not() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:53".parse().unwrap();
        let mut c = CopyFilter::default();
        assert!(c.is_new(Duration::from_millis(1000), a, b, b"x"));
        assert!(!c.is_new(Duration::from_millis(1001), a, b, b"x"));
        assert!(c.is_new(Duration::from_millis(2000), a, b, b"x"));
        assert!(c.is_new(Duration::from_millis(2000), b, a, b"x"));
    }

    #[test]
    fn garbage_does_not_panic() {
        for link in [
            LinkKind::Ip,
            LinkKind::Ethernet,
            LinkKind::LinuxSll,
            LinkKind::LinuxSll2,
            LinkKind::Null,
        ] {
            for n in 0..64u8 {
                let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x45).collect();
                let _ = decode(link, &data);
                let _ = decode_unreachable(link, &data);
            }
        }
    }
}
