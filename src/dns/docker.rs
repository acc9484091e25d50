//! Docker's embedded resolver: clients ask 127.0.0.11:53, nat OUTPUT DNATs that to
//! 127.0.0.11:<random port> and the reply is SNATed back to :53, so a capture sees the query
//! go to the random port and the answer come from :53. Learn the real ports so the two halves
//! pair as one lookup (and so the capture filter lets the random port through).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use super::packet::Transport;
use super::Alias;
use crate::facts::{firewall, FirewallDump};
use crate::nat::model::{Action, Cond, Dir, Ruleset};
use crate::netns::sockets::{self, Proto, Which};
use crate::netns::NetNs;

/// The address containers are told to use.
pub(crate) const EMBEDDED_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

/// How the resolver's real port was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Evidence {
    /// A nat DNAT rule for 127.0.0.11:53.
    NatRule,
    /// A socket listening on 127.0.0.11 on a port other than 53.
    Socket,
}

/// One leg of Docker's resolver: transport and the port it really listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ResolverPort {
    /// UDP or TCP.
    pub transport: Transport,
    /// The random port behind 127.0.0.11:53.
    pub port: u16,
    /// Where we learnt it.
    pub evidence: Evidence,
}

/// Resolver ports from the sockets listening on 127.0.0.11 inside `ns`.
pub(crate) fn ports_from_sockets(ns: &NetNs) -> Vec<ResolverPort> {
    let Ok(Ok(socks)) = ns.run(|| sockets::list_unowned(Which::Listening)) else {
        return Vec::new();
    };
    let mut out: Vec<ResolverPort> = socks
        .iter()
        .filter(|s| s.is_listening() && s.local.ip() == EMBEDDED_RESOLVER && s.local.port() != 53)
        .map(|s| ResolverPort {
            transport: match s.proto {
                Proto::Udp => Transport::Udp,
                Proto::Tcp => Transport::Tcp,
            },
            port: s.local.port(),
            evidence: Evidence::Socket,
        })
        .collect();
    out.sort_by_key(|p| (p.transport, p.port));
    out.dedup();
    out
}

/// Resolver ports from DNAT rules for 127.0.0.11:53 (Docker's DOCKER_OUTPUT chain:
/// `-d 127.0.0.11/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:PORT`).
pub(crate) fn ports_from_ruleset(rs: &Ruleset) -> Vec<ResolverPort> {
    let mut out = Vec::new();
    for rule in rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
    {
        let Action::Dnat { to } = &rule.action else {
            continue;
        };
        let Some(ports) = to.ports else { continue };
        if to.addr.is_some_and(|a| a != EMBEDDED_RESOLVER) {
            continue;
        }
        let mut to_resolver = false;
        let mut port_53 = false;
        let mut protos = Vec::new();
        for m in rule.matches.iter().filter(|m| !m.negated) {
            match &m.cond {
                Cond::Addr { dir: Dir::Dst, net } => {
                    to_resolver = net.addr() == EMBEDDED_RESOLVER && net.prefix_len() == 32;
                }
                Cond::Port {
                    dir: Dir::Dst,
                    ports,
                } => {
                    port_53 = ports.iter().any(|r| r.contains(53));
                }
                Cond::Proto { proto } => protos.push(proto.as_str()),
                _ => {}
            }
        }
        if !(to_resolver && port_53) {
            continue;
        }
        for (name, transport) in [("udp", Transport::Udp), ("tcp", Transport::Tcp)] {
            if protos.is_empty() || protos.contains(&name) {
                out.push(ResolverPort {
                    transport,
                    port: ports.from,
                    evidence: Evidence::NatRule,
                });
            }
        }
    }
    out.sort_by_key(|p| (p.transport, p.port));
    out.dedup();
    out
}

/// Where Docker's embedded resolver really listens in `ns` (empty when there is none): the
/// namespace's nat rules first, from its firewall dump `fw` (they hold even when the
/// resolver is down, which is worth seeing), then sockets listening on 127.0.0.11 (when no
/// rule tool could be run).
pub(crate) fn resolver_ports(ns: &NetNs, fw: &FirewallDump) -> Vec<ResolverPort> {
    let mut out = fw
        .ruleset_all(ns.label())
        .map(|rs| ports_from_ruleset(&rs))
        .unwrap_or_default();
    for p in ports_from_sockets(ns) {
        if !out.iter().any(|o| o.transport == p.transport) {
            out.push(p);
        }
    }
    out
}

/// The aliases for Docker's embedded resolver in each of `nss`, their rules read once through
/// facts::firewall (a few namespaces at a time).
pub(crate) fn embedded_resolver_aliases(nss: &[&NetNs]) -> Vec<Vec<Alias>> {
    let dumps = firewall::dump_each(nss);
    nss.iter()
        .zip(&dumps)
        .map(|(ns, fw)| aliases_for(&resolver_ports(ns, fw)))
        .collect()
}

/// Aliases showing each real port as 127.0.0.11:53.
pub(crate) fn aliases_for(ports: &[ResolverPort]) -> Vec<Alias> {
    ports
        .iter()
        .map(|p| Alias {
            transport: p.transport,
            real: SocketAddr::new(EMBEDDED_RESOLVER, p.port),
            shown: SocketAddr::new(EMBEDDED_RESOLVER, 53),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_output_rules_give_the_ports() {
        let text = "*nat\n:OUTPUT ACCEPT [0:0]\n:DOCKER_OUTPUT - [0:0]\n:DOCKER_POSTROUTING - [0:0]\n\
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT\n\
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.11:36005\n\
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:48245\n\
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport 36005 -j SNAT --to-source :53\n\
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 48245 -j SNAT --to-source :53\n\
-A OUTPUT -d 10.0.0.1/32 -p udp --dport 53 -j DNAT --to-destination 10.0.0.2:5353\n\
COMMIT\n";
        let rs = crate::nat::iptables::parse(text);
        let got: Vec<(Transport, u16)> = ports_from_ruleset(&rs)
            .iter()
            .map(|p| (p.transport, p.port))
            .collect();
        assert_eq!(got, [(Transport::Udp, 48245), (Transport::Tcp, 36005)]);
    }
}
