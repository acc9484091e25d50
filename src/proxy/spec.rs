//! Mapping specs: `[tcp:|udp:][IP:]PORT[-PORT]=IP[:PORT[-PORT]]`, IPv6 in brackets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use super::Proto;

/// A mapping the user wrote that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bad mapping '{spec}': {why} (expected [tcp:|udp:][IP:]PORT[-PORT]=IP:PORT[-PORT], IPv6 in brackets like [::1]:8080)")]
pub(crate) struct SpecError {
    /// What was written.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (== first for one port).
    pub last: u16,
}

impl PortRange {
    /// How many ports.
    pub(crate) fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One `-p` mapping as written (possibly a range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Mapping {
    /// TCP or UDP.
    pub proto: Proto,
    /// The listen address; None = every address, IPv4 and IPv6.
    pub listen_ip: Option<IpAddr>,
    /// Listen ports.
    pub listen: PortRange,
    /// Backend address.
    pub target_ip: IpAddr,
    /// Backend ports (same length as `listen`, or one port for all).
    pub target: PortRange,
}

/// One listening socket's worth of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PortMap {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where to listen.
    pub listen: SocketAddr,
    /// True for the IPv6 half of an "every address" mapping: skipped quietly when the
    /// namespace has no IPv6.
    pub optional: bool,
    /// Where to forward.
    pub target: SocketAddr,
}

fn bad(spec: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        spec: spec.into(),
        why: why.into(),
    }
}

fn ports(spec: &str, s: &str) -> Result<PortRange, SpecError> {
    let p = |x: &str| -> Result<u16, SpecError> {
        match x.trim().parse::<u16>() {
            Ok(0) => Err(bad(spec, "port 0 cannot be forwarded")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(spec, format!("'{x}' is not a port (1-65535)"))),
        }
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (p(a)?, p(b)?),
        None => {
            let n = p(s)?;
            (n, n)
        }
    };
    if last < first {
        return Err(bad(
            spec,
            format!("port range {first}-{last} runs backwards"),
        ));
    }
    Ok(PortRange { first, last })
}

/// Split `[IP:]PORTS` / `[v6]:PORTS` / `IP` into (ip, ports).
fn host_ports<'a>(spec: &str, s: &'a str) -> Result<(Option<IpAddr>, Option<&'a str>), SpecError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(spec, "missing ']' after an IPv6 address"))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| bad(spec, format!("'{ip}' is not an IPv6 address")))?;
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad(spec, format!("unexpected '{after}' after ']'"))),
        };
        return Ok((Some(IpAddr::V6(ip)), ports));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Err(bad(spec, "put IPv6 addresses in brackets: [::1]:8080"));
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok((Some(IpAddr::V4(ip)), None));
    }
    match s.rsplit_once(':') {
        Some((ip, p)) => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| bad(spec, format!("'{ip}' is not an IPv4 address")))?;
            Ok((Some(IpAddr::V4(ip)), Some(p)))
        }
        None => Ok((None, Some(s))),
    }
}

/// Parse a listen side `[IP:]PORT[-PORT]`.
pub(crate) fn parse_listen(spec: &str, s: &str) -> Result<(Option<IpAddr>, PortRange), SpecError> {
    let (ip, p) = host_ports(spec, s.trim())?;
    let p = p.ok_or_else(|| bad(spec, "the listen side needs a port"))?;
    Ok((ip, ports(spec, p)?))
}

/// Parse a target side `IP:PORT[-PORT]` (or just `IP`: the same ports as the listen side).
pub(crate) fn parse_target(spec: &str, s: &str) -> Result<(IpAddr, Option<PortRange>), SpecError> {
    let (ip, p) = host_ports(spec, s.trim())?;
    let ip = ip.ok_or_else(|| bad(spec, "the target needs an address: IP:PORT"))?;
    let p = p.map(|p| ports(spec, p)).transpose()?;
    Ok((ip, p))
}

/// Parse `proto` + listen + target into a checked [`Mapping`].
pub(crate) fn mapping(
    spec: &str,
    proto: Proto,
    listen: &str,
    target: &str,
) -> Result<Mapping, SpecError> {
    let (listen_ip, lp) = parse_listen(spec, listen)?;
    let (target_ip, tp) = parse_target(spec, target)?;
    let tp = tp.unwrap_or(lp);
    if tp.len() != 1 && tp.len() != lp.len() {
        return Err(bad(
            spec,
            format!(
                "the listen range has {} ports but the target range has {}; give ranges of the same length or one target port",
                lp.len(),
                tp.len()
            ),
        ));
    }
    if target_ip.is_unspecified() {
        return Err(bad(spec, "the target address cannot be 0.0.0.0 or ::"));
    }
    Ok(Mapping {
        proto,
        listen_ip,
        listen: lp,
        target_ip,
        target: tp,
    })
}

/// Split an optional `tcp:` / `udp:` prefix off `s` (a part of `spec`); `sctp:` is refused
/// with a message naming SCTP.
pub(crate) fn split_proto<'a>(
    spec: &str,
    s: &'a str,
) -> Result<(Option<Proto>, &'a str), SpecError> {
    if let Some(r) = s.strip_prefix("tcp:") {
        Ok((Some(Proto::Tcp), r))
    } else if let Some(r) = s.strip_prefix("udp:") {
        Ok((Some(Proto::Udp), r))
    } else if s.starts_with("sctp:") {
        Err(bad(
            spec,
            "SCTP is not supported by nettool proxy (TCP and UDP are); use docker-proxy for SCTP ports",
        ))
    } else {
        Ok((None, s))
    }
}

/// Parse a `-p` spec: `[tcp:|udp:]LISTEN=TARGET`.
pub(crate) fn parse_map(spec: &str) -> Result<Mapping, SpecError> {
    let (proto, rest) = split_proto(spec, spec)?;
    let proto = proto.unwrap_or(Proto::Tcp);
    let (l, t) = rest
        .split_once('=')
        .ok_or_else(|| bad(spec, "missing '=' between the listen side and the target"))?;
    mapping(spec, proto, l, t)
}

impl Mapping {
    /// One [`PortMap`] per listening socket: every port of the range, and for an "every
    /// address" mapping both 0.0.0.0 and [::].
    pub(crate) fn expand(&self) -> Vec<PortMap> {
        let mut out = Vec::with_capacity(self.listen.len() as usize * 2);
        for i in 0..self.listen.len() {
            let lport = self.listen.first + i as u16;
            let tport = if self.target.len() == 1 {
                self.target.first
            } else {
                self.target.first + i as u16
            };
            let target = SocketAddr::new(self.target_ip, tport);
            match self.listen_ip {
                Some(ip) => out.push(PortMap {
                    proto: self.proto,
                    listen: SocketAddr::new(ip, lport),
                    optional: false,
                    target,
                }),
                None => {
                    out.push(PortMap {
                        proto: self.proto,
                        listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), lport),
                        optional: false,
                        target,
                    });
                    out.push(PortMap {
                        proto: self.proto,
                        listen: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), lport),
                        optional: true,
                        target,
                    });
                }
            }
        }
        out
    }
}

/// Whether a listener on `ours` (IPv6 ones are IPV6_V6ONLY, as the proxy binds them) cannot be
/// bound next to one on `other`: the same port and either the same address or a wildcard of
/// the family; an IPv6 `other` that is not V6ONLY (`other_dual`) takes IPv4 too, as
/// `[::]` or as an IPv4-mapped address.
pub(crate) fn listens_clash(ours: SocketAddr, other: SocketAddr, other_dual: bool) -> bool {
    if ours.port() != other.port() {
        return false;
    }
    let (a, b) = (ours.ip(), other.ip());
    if a.is_ipv4() == b.is_ipv4() {
        return a == b || a.is_unspecified() || b.is_unspecified();
    }
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V6(b)) if other_dual => {
            b.is_unspecified()
                || b.to_ipv4_mapped()
                    .is_some_and(|b| a.is_unspecified() || a == b)
        }
        _ => false,
    }
}

/// Two mappings that both listen on one address and port (the same protocol): the second
/// could not be bound next to the first. The first such pair and the address, in order.
pub(crate) fn first_overlap(maps: &[Mapping]) -> Option<(&Mapping, &Mapping, Proto, SocketAddr)> {
    let mut seen: std::collections::HashMap<(Proto, u16), Vec<(SocketAddr, usize)>> =
        Default::default();
    for (i, m) in maps.iter().enumerate() {
        for pm in m.expand() {
            let here = seen.entry((pm.proto, pm.listen.port())).or_default();
            if let Some(&(_, j)) = here
                .iter()
                .find(|(other, _)| listens_clash(pm.listen, *other, false))
            {
                return Some((&maps[j], m, pm.proto, pm.listen));
            }
            here.push((pm.listen, i));
        }
    }
    None
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = |ip: IpAddr| match ip {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        match self.listen_ip {
            Some(l) => write!(f, "{}:{}:{}", self.proto, ip(l), self.listen)?,
            None => write!(f, "{}:{}", self.proto, self.listen)?,
        }
        write!(f, "={}:{}", ip(self.target_ip), self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let m = parse_map("8080=172.19.0.2:80").unwrap();
        assert_eq!(
            (m.proto, m.listen_ip, m.listen.first),
            (Proto::Tcp, None, 8080)
        );
        assert_eq!(m.expand().len(), 2);
        let m = parse_map("udp:[::1]:5300-5301=[fd00::2]:53").unwrap();
        assert_eq!(m.proto, Proto::Udp);
        let e = m.expand();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].listen, "[::1]:5301".parse().unwrap());
        assert_eq!(e[1].target, "[fd00::2]:53".parse().unwrap());
        let m = parse_map("127.0.0.1:9000-9002=10.0.0.1:7000-7002").unwrap();
        assert_eq!(m.expand()[2].target, "10.0.0.1:7002".parse().unwrap());
        let m = parse_map("9000=10.0.0.1").unwrap();
        assert_eq!(m.target.first, 9000);
        assert_eq!(m.to_string(), "tcp:9000=10.0.0.1:9000");
    }

    #[test]
    fn overlapping_listeners_are_found() {
        let maps = |specs: &[&str]| -> Vec<Mapping> {
            specs.iter().map(|s| parse_map(s).unwrap()).collect()
        };
        let none: &[&[&str]] = &[
            &["8080=10.0.0.1:80", "udp:8080=10.0.0.1:80"],
            &["127.0.0.1:53=10.0.0.1:53", "127.0.0.2:53=10.0.0.1:53"],
            &["[::1]:80=10.0.0.1:80", "127.0.0.1:80=10.0.0.1:80"],
            &["8000-8009=10.0.0.1:80", "8010=10.0.0.1:80"],
        ];
        for specs in none {
            assert!(first_overlap(&maps(specs)).is_none(), "{specs:?}");
        }
        let m = maps(&["8100-8105=10.0.0.1:80", "8103=10.0.0.1:81"]);
        let (a, b, proto, addr) = first_overlap(&m).unwrap();
        assert_eq!((a, b), (&m[0], &m[1]));
        assert_eq!((proto, addr), (Proto::Tcp, "0.0.0.0:8103".parse().unwrap()));
        let m = maps(&["udp:127.0.0.1:53=10.0.0.1:53", "udp:53=10.0.0.2:53"]);
        assert_eq!(first_overlap(&m).unwrap().3, "0.0.0.0:53".parse().unwrap());
        let m = maps(&["[::]:80=10.0.0.1:80", "[::1]:80=10.0.0.1:80"]);
        assert_eq!(first_overlap(&m).unwrap().3, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn a_listener_clashes_only_within_its_family_unless_the_other_is_dual_stack() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(listens_clash(a("0.0.0.0:80"), a("127.0.0.1:80"), false));
        assert!(!listens_clash(a("0.0.0.0:80"), a("127.0.0.1:81"), false));
        assert!(!listens_clash(a("[::]:80"), a("0.0.0.0:80"), false));
        assert!(!listens_clash(a("0.0.0.0:80"), a("[::]:80"), false));
        assert!(listens_clash(a("0.0.0.0:80"), a("[::]:80"), true));
        assert!(listens_clash(
            a("127.0.0.1:80"),
            a("[::ffff:127.0.0.1]:80"),
            true
        ));
        assert!(!listens_clash(
            a("127.0.0.2:80"),
            a("[::ffff:127.0.0.1]:80"),
            true
        ));
        assert!(listens_clash(a("[::1]:80"), a("[::]:80"), false));
    }

    #[test]
    fn mistakes_are_explained() {
        for (spec, want) in [
            ("8080", "missing '='"),
            ("8080=::1:80", "brackets"),
            ("0=1.2.3.4:80", "port 0"),
            ("90-80=1.2.3.4:80", "backwards"),
            ("80-82=1.2.3.4:80-81", "same length"),
            ("sctp:80=1.2.3.4:80", "SCTP"),
            ("80=0.0.0.0:80", "cannot be 0.0.0.0"),
            ("80=host:80", "not an IPv4"),
            ("[::1=1.2.3.4:5", "']'"),
        ] {
            let e = parse_map(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
