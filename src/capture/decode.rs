//! What a captured frame is, in a few fields: enough for the one-line live view, the JSON lines
//! and the conntrack lookup of --follow.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

use super::ring::LinkType;

/// A frame's addresses, protocol and flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct PacketSummary {
    /// ip, ip6, arp, or the EtherType in hex.
    pub network: String,
    /// tcp, udp, icmp, icmp6, or the IP protocol number.
    pub transport: Option<String>,
    /// Source address.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Source port (TCP/UDP).
    pub sport: Option<u16>,
    /// Destination port (TCP/UDP).
    pub dport: Option<u16>,
    /// TCP flags as tcpdump prints them ([S.], [P.], [F.], [R]).
    pub flags: Option<String>,
    /// Payload bytes above the transport header.
    pub payload_len: usize,
    /// ICMP: what it is (`echo request id 7 seq 1`, `unreachable`, `time exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<String>,
    /// ICMP echo: its id, which conntrack keys the flow by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    /// ICMP error: the tuple of the packet it is about (quoted in its payload), the flow it
    /// belongs to.
    #[serde(skip)]
    pub quoted: Option<(u8, IpAddr, u16, IpAddr, u16)>,
}

impl PacketSummary {
    /// The (protocol number, source, sport, destination, dport) conntrack knows the flow by.
    pub(crate) fn tuple(&self) -> Option<(u8, IpAddr, u16, IpAddr, u16)> {
        let proto = match self.transport.as_deref()? {
            "tcp" => 6,
            "udp" => 17,
            // Echo is keyed by its id both ways; an error belongs to the flow it quotes.
            "icmp" | "icmp6" if self.quoted.is_some() => return self.quoted,
            "icmp" => 1,
            "icmp6" => 58,
            _ => return None,
        };
        match proto {
            1 | 58 => {
                let id = self.icmp_id?;
                Some((proto, self.src?, id, self.dst?, id))
            }
            _ => Some((proto, self.src?, self.sport?, self.dst?, self.dport?)),
        }
    }
}

fn tcp_flags(t: &etherparse::TcpSlice<'_>) -> String {
    let mut s = String::from("[");
    for (on, c) in [
        (t.syn(), 'S'),
        (t.fin(), 'F'),
        (t.rst(), 'R'),
        (t.psh(), 'P'),
        (t.ack(), '.'),
    ] {
        if on {
            s.push(c);
        }
    }
    s.push(']');
    s
}

/// Decode `data` as seen on a `link` interface; an undecodable frame gives only what is known.
pub(crate) fn summarize(link: LinkType, data: &[u8]) -> PacketSummary {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(data),
        LinkType::RawIp => SlicedPacket::from_ip(data),
    };
    let mut s = PacketSummary::default();
    let Ok(p) = sliced else {
        s.network = "?".into();
        return s;
    };
    match &p.net {
        Some(NetSlice::Ipv4(v4)) => {
            s.network = "ip".into();
            s.src = Some(v4.header().source_addr().into());
            s.dst = Some(v4.header().destination_addr().into());
            s.transport = Some(v4.header().protocol().0.to_string());
        }
        Some(NetSlice::Ipv6(v6)) => {
            s.network = "ip6".into();
            s.src = Some(v6.header().source_addr().into());
            s.dst = Some(v6.header().destination_addr().into());
        }
        Some(NetSlice::Arp(a)) => {
            s.network = "arp".into();
            s.src = a
                .sender_protocol_addr()
                .try_into()
                .ok()
                .map(|b: [u8; 4]| IpAddr::from(b));
            s.dst = a
                .target_protocol_addr()
                .try_into()
                .ok()
                .map(|b: [u8; 4]| IpAddr::from(b));
        }
        None => {
            s.network = match &p.link {
                Some(etherparse::LinkSlice::Ethernet2(e)) => format!("0x{:04x}", e.ether_type().0),
                _ => "?".into(),
            };
        }
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            s.transport = Some("tcp".into());
            s.sport = Some(t.source_port());
            s.dport = Some(t.destination_port());
            s.flags = Some(tcp_flags(t));
            s.payload_len = t.payload().len();
        }
        Some(TransportSlice::Udp(u)) => {
            s.transport = Some("udp".into());
            s.sport = Some(u.source_port());
            s.dport = Some(u.destination_port());
            s.payload_len = u.payload().len();
        }
        Some(TransportSlice::Icmpv4(i)) => {
            use etherparse::Icmpv4Type as T;
            s.transport = Some("icmp".into());
            s.payload_len = i.payload().len();
            let (what, id) = match i.icmp_type() {
                T::EchoRequest(h) => (
                    format!("echo request id {} seq {}", h.id, h.seq),
                    Some(h.id),
                ),
                T::EchoReply(h) => (format!("echo reply id {} seq {}", h.id, h.seq), Some(h.id)),
                T::DestinationUnreachable(_) => ("unreachable".to_string(), None),
                T::TimeExceeded(_) => ("time exceeded".to_string(), None),
                T::Redirect(_) => ("redirect".to_string(), None),
                T::ParameterProblem(_) => ("parameter problem".to_string(), None),
                _ => (format!("type {}", i.type_u8()), None),
            };
            if id.is_none() && matches!(i.type_u8(), 3 | 5 | 11 | 12) {
                s.quoted = quoted_tuple(i.payload());
            }
            s.icmp = Some(what);
            s.icmp_id = id;
        }
        Some(TransportSlice::Icmpv6(i)) => {
            use etherparse::Icmpv6Type as T;
            s.transport = Some("icmp6".into());
            s.payload_len = i.payload().len();
            let (what, id) = match i.icmp_type() {
                T::EchoRequest(h) => (
                    format!("echo request id {} seq {}", h.id, h.seq),
                    Some(h.id),
                ),
                T::EchoReply(h) => (format!("echo reply id {} seq {}", h.id, h.seq), Some(h.id)),
                T::DestinationUnreachable(_) => ("unreachable".to_string(), None),
                T::PacketTooBig { .. } => ("packet too big".to_string(), None),
                T::TimeExceeded(_) => ("time exceeded".to_string(), None),
                T::NeighborSolicitation => ("neighbor solicitation".to_string(), None),
                T::NeighborAdvertisement(_) => ("neighbor advertisement".to_string(), None),
                _ => (format!("type {}", i.type_u8()), None),
            };
            if id.is_none() && (1..=4).contains(&i.type_u8()) {
                s.quoted = quoted_tuple(i.payload());
            }
            s.icmp = Some(what);
            s.icmp_id = id;
        }
        _ => {}
    }
    s
}

/// The (protocol, source, sport, destination, dport) of the IP packet an ICMP error quotes.
/// Read by hand: the quote is often cut short (8 bytes of TCP), which a full parser refuses.
fn quoted_tuple(ip: &[u8]) -> Option<(u8, IpAddr, u16, IpAddr, u16)> {
    let ports = |at: usize| -> Option<(u16, u16)> {
        let p = ip.get(at..at + 4)?;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    };
    match ip.first()? >> 4 {
        4 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let proto = *ip.get(9)?;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let (sp, dp) = match proto {
                6 | 17 => ports(ihl)?,
                1 => {
                    let id = u16::from_be_bytes(ip.get(ihl + 4..ihl + 6)?.try_into().ok()?);
                    (id, id)
                }
                _ => return None,
            };
            Some((proto, IpAddr::from(src), sp, IpAddr::from(dst), dp))
        }
        6 => {
            let proto = *ip.get(6)?;
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let (sp, dp) = match proto {
                6 | 17 => ports(40)?,
                58 => {
                    let id = u16::from_be_bytes(ip.get(44..46)?.try_into().ok()?);
                    (id, id)
                }
                _ => return None,
            };
            Some((proto, IpAddr::from(src), sp, IpAddr::from(dst), dp))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_syn_over_ethernet() {
        let b = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        let s = summarize(LinkType::Ethernet, &v);
        assert_eq!(s.transport.as_deref(), Some("tcp"));
        assert_eq!(s.flags.as_deref(), Some("[S]"));
        assert_eq!(
            s.tuple(),
            Some((
                6,
                "10.0.0.1".parse().unwrap(),
                40000,
                "10.0.0.2".parse().unwrap(),
                80
            ))
        );
        assert_eq!(summarize(LinkType::RawIp, &[0xff]).network, "?");
    }
}
