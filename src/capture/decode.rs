//! What a captured frame is, in a few fields: enough for the one-line live view, the JSON lines
//! and the conntrack lookup of --follow.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

use super::ring::LinkType;

/// A frame's addresses, protocol and flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PacketSummary {
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
}

impl PacketSummary {
    /// The (protocol number, source, sport, destination, dport) conntrack knows the flow by.
    pub fn tuple(&self) -> Option<(u8, IpAddr, u16, IpAddr, u16)> {
        let proto = match self.transport.as_deref()? {
            "tcp" => 6,
            "udp" => 17,
            _ => return None,
        };
        Some((proto, self.src?, self.sport?, self.dst?, self.dport?))
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
pub fn summarize(link: LinkType, data: &[u8]) -> PacketSummary {
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
            s.transport = Some("icmp".into());
            s.payload_len = i.payload().len();
        }
        Some(TransportSlice::Icmpv6(i)) => {
            s.transport = Some("icmp6".into());
            s.payload_len = i.payload().len();
        }
        _ => {}
    }
    s
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
