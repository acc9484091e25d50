//! The PROXY protocol header (HAProxy's proxy-protocol.txt: version 1, a text line, section 2.1;
//! version 2, binary, section 2.2): sent to the backend before the client's first byte (TCP) or
//! in front of every datagram (UDP, version 2 only), so a backend that reads it (HAProxy
//! `accept-proxy`, nginx `proxy_protocol`, ...) learns the client's address without transparent
//! mode.

use std::net::{IpAddr, SocketAddr};

use super::Proto;

/// The 12-byte signature every v2 header starts with.
pub(crate) const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Version 2, command PROXY (the connection was relayed on behalf of another node).
const VERSION_2_PROXY: u8 = 0x21;

/// Which PROXY protocol header the backend gets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProxyProtocol {
    /// Version 1, one text line (TCP only); what older backends read.
    V1,
    /// Version 2, binary (TCP and UDP).
    V2,
}

impl ProxyProtocol {
    /// The header for a connection (TCP) or datagram (UDP) from `client` to `dest`.
    pub(crate) fn header(self, transport: Proto, client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        match self {
            ProxyProtocol::V1 => v1_header(client, dest),
            ProxyProtocol::V2 => v2_header(transport, client, dest),
        }
    }

    /// Why this version cannot carry `transport`, if it cannot (version 1 has no UDP).
    pub(crate) fn refuses(self, transport: Proto) -> Option<&'static str> {
        (self == ProxyProtocol::V1 && transport == Proto::Udp)
            .then_some("PROXY protocol v1 carries TCP only: use --proxy-protocol v2 for UDP ports")
    }
}

/// The v1 line for a TCP connection from `client` to `dest`: `PROXY TCP4 SRC DST SPORT DPORT`
/// and CRLF. Addresses of different families are both written as IPv6 (TCP6), the IPv4 one
/// mapped, as the spec wants one family per line.
pub(crate) fn v1_header(client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), dest.ip().to_canonical());
    let (family, src, dst) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ("TCP4", s.to_string(), d.to_string()),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            ("TCP6", v6(s).to_string(), v6(d).to_string())
        }
    };
    format!(
        "PROXY {family} {src} {dst} {} {}\r\n",
        client.port(),
        dest.port()
    )
    .into_bytes()
}

/// The v2 header for a connection from `client` to `dest` (the address the client reached).
/// Addresses of different families are both written as IPv6 (an IPv4 one mapped), as the
/// spec asks for a single family.
pub(crate) fn v2_header(transport: Proto, client: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let (src, dst) = (client.ip().to_canonical(), dest.ip().to_canonical());
    let proto = match transport {
        Proto::Tcp => 0x1,
        Proto::Udp => 0x2,
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_2_PROXY);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x10 | proto);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x20 | proto);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&dest.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader written from the spec's section 2.2, independent of [`v2_header`]: (command,
    /// family, transport, source, destination, header length).
    fn parse(b: &[u8]) -> (u8, u8, u8, SocketAddr, SocketAddr, usize) {
        assert_eq!(&b[..12], &SIGNATURE, "signature");
        assert_eq!(b[12] >> 4, 2, "version");
        let len = u16::from_be_bytes([b[14], b[15]]) as usize;
        let a = &b[16..16 + len];
        let (src, dst, rest): (IpAddr, IpAddr, &[u8]) = match b[13] >> 4 {
            1 => (
                <[u8; 4]>::try_from(&a[0..4]).unwrap().into(),
                <[u8; 4]>::try_from(&a[4..8]).unwrap().into(),
                &a[8..],
            ),
            2 => (
                <[u8; 16]>::try_from(&a[0..16]).unwrap().into(),
                <[u8; 16]>::try_from(&a[16..32]).unwrap().into(),
                &a[32..],
            ),
            f => panic!("family {f}"),
        };
        let sp = u16::from_be_bytes([rest[0], rest[1]]);
        let dp = u16::from_be_bytes([rest[2], rest[3]]);
        (
            b[12] & 0xF,
            b[13] >> 4,
            b[13] & 0xF,
            SocketAddr::new(src, sp),
            SocketAddr::new(dst, dp),
            16 + len,
        )
    }

    #[test]
    fn a_header_haproxy_wrote_is_what_we_write() {
        // HAProxy's own send-proxy-v2 for 172.19.0.1:42578 -> 172.19.0.3:80, as captured in front
        // of a request: signature, 0x21 (v2, PROXY), 0x11 (AF_INET, STREAM), length 12.
        let haproxy: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x0c, 0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        let ours = v2_header(
            Proto::Tcp,
            "172.19.0.1:42578".parse().unwrap(),
            "172.19.0.3:80".parse().unwrap(),
        );
        assert_eq!(ours, haproxy);
        let (cmd, fam, tr, s, d, n) = parse(&haproxy);
        assert_eq!((cmd, fam, tr, n), (1, 1, 1, 28));
        assert_eq!(s.to_string(), "172.19.0.1:42578");
        assert_eq!(d.to_string(), "172.19.0.3:80");
    }

    #[test]
    fn v1_lines_are_the_specs_examples() {
        // Section 2.1's examples: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        // (the longest TCP4 line) and "PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".
        let h = v1_header(
            "255.255.255.255:65535".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
        );
        assert_eq!(
            h,
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        let max6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let h = v1_header(max6.parse().unwrap(), max6.parse().unwrap());
        assert_eq!(
            h,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        // The spec's limit: 107 bytes with the CRLF.
        assert!(h.len() <= 107, "{}", h.len());
        // Mixed families: TCP6 with the IPv4 one mapped; a v4-mapped client is the IPv4 it is.
        let h = v1_header(
            "[2001:db8::7]:5000".parse().unwrap(),
            "192.0.2.1:80".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 5000 80\r\n");
        let h = v1_header(
            "[::ffff:10.1.2.3]:9".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 10.1.2.3 10.0.0.2 9 2\r\n");
        assert!(ProxyProtocol::V1.refuses(Proto::Udp).is_some());
        assert!(ProxyProtocol::V1.refuses(Proto::Tcp).is_none());
        assert!(ProxyProtocol::V2.refuses(Proto::Udp).is_none());
    }

    #[test]
    fn spec_families_lengths_and_transports() {
        // Section 2.2: \x11 TCP over IPv4 (12 address bytes), \x12 UDP over IPv4, \x21 TCP over
        // IPv6 (36), \x22 UDP over IPv6.
        let cases = [
            (Proto::Tcp, "10.0.0.1:1", "10.0.0.2:2", 0x11, 28),
            (Proto::Udp, "10.0.0.1:1", "10.0.0.2:2", 0x12, 28),
            (Proto::Tcp, "[fd00::1]:1", "[fd00::2]:2", 0x21, 52),
            (Proto::Udp, "[fd00::1]:1", "[fd00::2]:2", 0x22, 52),
        ];
        for (t, c, d, fam, len) in cases {
            let h = v2_header(t, c.parse().unwrap(), d.parse().unwrap());
            assert_eq!((h[12], h[13], h.len()), (0x21, fam, len), "{c} {d}");
            let (_, _, _, s, dd, n) = parse(&h);
            assert_eq!(
                (s.to_string(), dd.to_string(), n),
                (c.into(), d.into(), len)
            );
        }
        // Mixed families: both as IPv6, the IPv4 one mapped.
        let h = v2_header(
            Proto::Tcp,
            "[2001:db8::7]:5000".parse().unwrap(),
            "192.0.2.1:80".parse().unwrap(),
        );
        let (_, fam, _, s, d, _) = parse(&h);
        assert_eq!(fam, 2);
        assert_eq!(s.to_string(), "[2001:db8::7]:5000");
        assert_eq!(d.to_string(), "[::ffff:192.0.2.1]:80");
        // A v4-mapped client (from a dual-stack socket) is written as the IPv4 it is.
        let h = v2_header(
            Proto::Tcp,
            "[::ffff:10.1.2.3]:9".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
        );
        assert_eq!(h[13], 0x11);
    }
}
