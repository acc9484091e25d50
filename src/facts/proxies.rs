//! Userland proxies holding a listening socket: docker-proxy and `nettool proxy` recognised
//! with the proxy's own argument parsers (`cmd::proxy::recognise`), and the classic socat
//! port forward. What each forwards is recorded, so doctor follows a proxied port onward.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::netns::sockets::Proto;
use crate::tap::event::Transport;

/// One process that forwards ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProxyProcess {
    /// Process id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// docker-proxy, nettool or socat.
    pub kind: String,
    /// Its command line.
    pub argv: Vec<String>,
    /// What it forwards.
    pub maps: Vec<ProxyMap>,
}

/// One forwarded port range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProxyMap {
    /// tcp or udp.
    pub proto: Proto,
    /// The listen address (None: every address).
    pub listen_ip: Option<IpAddr>,
    /// First listen port.
    pub listen_from: u16,
    /// Last listen port.
    pub listen_to: u16,
    /// Where it connects.
    #[serde(flatten)]
    pub target: ProxyTarget,
    /// First target port (ranges map one to one).
    pub target_from: u16,
}

/// Where a proxy connects: an address, or a name that does not resolve where nettool reads
/// the proxy's arguments (the proxy itself resolved it at its start, perhaps with another
/// /etc/resolv.conf, and keeps dialling its last addresses). Flattened, untagged: a snapshot
/// saved before names has `target_ip`, which still reads as an address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub(crate) enum ProxyTarget {
    /// An address (a name's first address when it resolves here).
    Address {
        /// The address.
        target_ip: IpAddr,
    },
    /// A name that does not resolve here.
    Unresolved {
        /// The name as written.
        target_name: String,
        /// The resolver's reason.
        unresolved: String,
    },
}

impl ProxyMap {
    /// The target for listen port `port` (None when out of range or past 65535).
    /// None too for a target name that does not resolve here ([`ProxyMap::target_port_for`]).
    pub(crate) fn target_for(&self, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.target_ip()?,
            self.target_port_for(port)?,
        ))
    }

    /// The target port for listen port `port` (None when out of range or past 65535).
    pub(crate) fn target_port_for(&self, port: u16) -> Option<u16> {
        let off = port.checked_sub(self.listen_from)?;
        if port > self.listen_to {
            return None;
        }
        self.target_from.checked_add(off)
    }

    /// The target address (None: a name that does not resolve here).
    pub(crate) fn target_ip(&self) -> Option<IpAddr> {
        match &self.target {
            ProxyTarget::Address { target_ip } => Some(*target_ip),
            ProxyTarget::Unresolved { .. } => None,
        }
    }
}

/// Recognise a proxy from its command line (None when it is not one).
pub(crate) fn recognise(pid: u32, comm: &str, argv: &[String]) -> Option<ProxyProcess> {
    let (kind, maps) = if let Some(maps) = crate::cmd::proxy::recognise(argv) {
        let kind = if crate::proxy::docker::is_docker_invocation(argv) {
            "docker-proxy"
        } else {
            "nettool"
        };
        let maps = maps
            .iter()
            .map(|r| {
                let m = &r.mapping;
                ProxyMap {
                    proto: match m.proto {
                        Transport::Tcp => Proto::Tcp,
                        Transport::Udp => Proto::Udp,
                    },
                    listen_ip: m.listen_ip,
                    listen_from: m.listen.first,
                    listen_to: m.listen.last,
                    target: match &r.unresolved {
                        None => ProxyTarget::Address {
                            target_ip: m.target_ip,
                        },
                        Some(u) => ProxyTarget::Unresolved {
                            target_name: u.name.clone(),
                            unresolved: u.why.clone(),
                        },
                    },
                    target_from: m.target.first,
                }
            })
            .collect();
        (kind, maps)
    } else {
        ("socat", socat(argv)?)
    };
    Some(ProxyProcess {
        pid,
        comm: comm.to_string(),
        kind: kind.into(),
        argv: argv.to_vec(),
        maps,
    })
}

/// The command line of `pid` (empty when it is gone).
pub(crate) fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// socat ADDR1 ADDR2 where ADDR1 listens (TCP-LISTEN:P / UDP-LISTEN:P) and ADDR2 connects.
fn socat(argv: &[String]) -> Option<Vec<ProxyMap>> {
    if argv.first()?.rsplit('/').next() != Some("socat") {
        return None;
    }
    let addrs: Vec<&String> = argv
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let [listen, target] = addrs.as_slice() else {
        return None;
    };
    let up = listen.to_ascii_uppercase();
    let proto = if up.starts_with("TCP-LISTEN:")
        || up.starts_with("TCP4-LISTEN:")
        || up.starts_with("TCP6-LISTEN:")
    {
        Proto::Tcp
    } else if up.starts_with("UDP-LISTEN:")
        || up.starts_with("UDP4-LISTEN:")
        || up.starts_with("UDP6-LISTEN:")
    {
        Proto::Udp
    } else {
        return None;
    };
    let port: u16 = listen.split([':', ',']).nth(1)?.parse().ok()?;
    let tup = target.to_ascii_uppercase();
    let rest = [
        "TCP:",
        "TCP4:",
        "TCP6:",
        "UDP:",
        "UDP4:",
        "UDP6:",
        "TCP-CONNECT:",
        "UDP-CONNECT:",
    ]
    .iter()
    .find_map(|p| tup.starts_with(p).then(|| &target[p.len()..]))?;
    let to: SocketAddr = rest.split(',').next()?.parse().ok()?;
    Some(vec![ProxyMap {
        proto,
        listen_ip: None,
        listen_from: port,
        listen_to: port,
        target: ProxyTarget::Address { target_ip: to.ip() },
        target_from: to.port(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn target(argv: &str, proto: Proto, port: u16) -> Option<SocketAddr> {
        recognise(1, "x", &v(argv))?
            .maps
            .iter()
            .find(|m| m.proto == proto && m.listen_from <= port && port <= m.listen_to)?
            .target_for(port)
    }

    #[test]
    fn docker_proxy_flags_through_the_proxys_parser() {
        let a = "/usr/sbin/docker-proxy -proto udp -host-ip 0.0.0.0 -host-port 5353 -container-ip 172.17.0.2 -container-port 53";
        assert_eq!(
            target(a, Proto::Udp, 5353),
            Some("172.17.0.2:53".parse().unwrap())
        );
        assert_eq!(target(a, Proto::Tcp, 5353), None);
        let a = "docker-proxy --container-ip=10.0.0.2 -container-port=81 -host-port 1 -host-ip ::";
        assert_eq!(
            target(a, Proto::Tcp, 1),
            Some("10.0.0.2:81".parse().unwrap())
        );
    }

    #[test]
    fn nettool_proxy_with_any_flag_it_takes() {
        // --pcap-max-mb was not in doctor's private copy of the flags: now the proxy's parser reads it.
        let a = "nettool proxy --pcap /tmp/x.pcap --pcap-max-mb 5 8080 172.19.0.2:80";
        assert_eq!(
            target(a, Proto::Tcp, 8080),
            Some("172.19.0.2:80".parse().unwrap())
        );
        let a = "nettool proxy -p tcp:127.0.0.1:9000-9002=10.0.0.5:7000-7002 -p udp:53=10.0.0.6:53";
        assert_eq!(
            target(a, Proto::Tcp, 9001),
            Some("10.0.0.5:7001".parse().unwrap())
        );
        assert_eq!(
            target(a, Proto::Udp, 53),
            Some("10.0.0.6:53".parse().unwrap())
        );
        assert_eq!(target(a, Proto::Tcp, 80), None);
        // A target range past 65535 is refused by the proxy's parser: no target, no panic.
        assert_eq!(
            target(
                "nettool proxy -p 100-200=10.0.0.5:65500-65535",
                Proto::Tcp,
                150
            ),
            None
        );
    }

    #[test]
    fn a_target_is_an_address_or_an_unresolved_name_and_old_snapshots_still_read() {
        // A snapshot saved before names: `target_ip` reads as an address.
        let old = r#"{"proto":"tcp","listen_ip":null,"listen_from":8080,"listen_to":8080,"target_ip":"10.0.0.2","target_from":80}"#;
        let m: ProxyMap = serde_json::from_str(old).unwrap();
        assert_eq!(m.target_for(8080), Some("10.0.0.2:80".parse().unwrap()));
        let m = ProxyMap {
            target: ProxyTarget::Unresolved {
                target_name: "db.internal".into(),
                unresolved: "no such name".into(),
            },
            ..m
        };
        assert_eq!(m.target_for(8080), None);
        assert_eq!(m.target_port_for(8080), Some(80));
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""target_name":"db.internal""#), "{text}");
        assert_eq!(serde_json::from_str::<ProxyMap>(&text).unwrap(), m);
    }

    #[test]
    fn socat_forward() {
        let a = "socat TCP-LISTEN:9999,fork,reuseaddr TCP:10.89.0.2:80";
        assert_eq!(
            target(a, Proto::Tcp, 9999),
            Some("10.89.0.2:80".parse().unwrap())
        );
        assert!(recognise(1, "socat", &v("/usr/bin/socat TCP-LISTEN:80,fork EXEC:cat")).is_none());
        assert!(recognise(1, "sleep", &v("sleep 100")).is_none());
    }
}
