//! Docker's embedded resolver: clients ask 127.0.0.11:53, nat OUTPUT DNATs that to
//! 127.0.0.11:<random port> and the reply is SNATed back to :53, so a capture sees the query
//! go to the random port and the answer come from :53. Learn the real ports so the two halves
//! pair as one lookup (and so the capture filter lets the random port through).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use super::packet::Transport;
use super::Alias;
use crate::netns::sockets::{self, Proto, Which};
use crate::netns::NetNs;

/// The address containers are told to use.
pub const EMBEDDED_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

/// How the resolver's real port was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// A nat DNAT rule for 127.0.0.11:53.
    NatRule,
    /// A socket listening on 127.0.0.11 on a port other than 53.
    Socket,
}

/// One leg of Docker's resolver: transport and the port it really listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResolverPort {
    /// UDP or TCP.
    pub transport: Transport,
    /// The random port behind 127.0.0.11:53.
    pub port: u16,
    /// Where we learnt it.
    pub evidence: Evidence,
}

/// Resolver ports from the sockets listening on 127.0.0.11 inside `ns`.
pub fn ports_from_sockets(ns: &NetNs) -> Vec<ResolverPort> {
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

/// Where Docker's embedded resolver really listens in `ns` (empty when there is none).
pub fn resolver_ports(ns: &NetNs) -> Vec<ResolverPort> {
    ports_from_sockets(ns)
}

/// The aliases for Docker's embedded resolver in `ns`.
pub fn embedded_resolver_aliases(ns: &NetNs) -> Vec<Alias> {
    aliases_for(&resolver_ports(ns))
}

/// Aliases showing each real port as 127.0.0.11:53.
pub fn aliases_for(ports: &[ResolverPort]) -> Vec<Alias> {
    ports
        .iter()
        .map(|p| Alias {
            transport: p.transport,
            real: SocketAddr::new(EMBEDDED_RESOLVER, p.port),
            shown: SocketAddr::new(EMBEDDED_RESOLVER, 53),
        })
        .collect()
}
