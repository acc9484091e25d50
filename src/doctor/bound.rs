//! A listener on the port that is bound to one address the client does not use: the host's
//! loopback (`socat ...,bind=127.0.0.1`, a service's localhost default) or another specific
//! address (`bind=10.0.0.1`, `http.server --bind`, a `nettool proxy 10.0.0.1:8080=...`).
//! That is the one cause, said with the process, where it listens and how to make it listen
//! where the client arrives; not "nothing receives" / "nothing listens", which send the
//! reader looking for a missing process.

use std::net::{IpAddr, SocketAddr};

use crate::facts::proxies::{ProxyKind, ProxyTarget};
use crate::facts::Snapshot;
use crate::nat::walk::Walk;
use crate::netns::sockets::{Proto, Socket};

use super::receiver::{owners_text, ID, TITLE};
use super::{Fault, Hop, Packet};

/// The socket on `proto`/`port` bound to one specific address (not a wildcard) that a
/// packet to `dst` does not reach. A loopback one first (when `dst` is not loopback: the
/// commonest cause, with its own fault), then one of `dst`'s family.
pub(crate) fn bound_elsewhere<'a>(
    listeners: impl IntoIterator<Item = &'a Socket>,
    proto: Proto,
    port: u16,
    dst: IpAddr,
) -> Option<&'a Socket> {
    listeners
        .into_iter()
        .filter(|s| {
            s.proto == proto
                && s.local.port() == port
                && !s.local.ip().is_unspecified()
                && !s.takes(dst)
        })
        .min_by_key(|s| {
            (
                fault_of(s.local.ip(), dst) != Fault::ServiceOnLoopback,
                s.local.is_ipv6() != dst.is_ipv6(),
            )
        })
}

/// The fault of a listener on `local` that a client of `dst` does not reach: loopback has its
/// own (the usual localhost default); any other specific address is the general one.
pub(crate) fn fault_of(local: IpAddr, dst: IpAddr) -> Fault {
    if local.is_loopback() && !dst.is_loopback() {
        Fault::ServiceOnLoopback
    } else {
        Fault::ServiceOnOtherAddress
    }
}

/// The wildcard address of `dst`'s family, as a listen address is written.
pub(crate) fn wildcard_of(dst: IpAddr) -> &'static str {
    if dst.is_ipv6() {
        "[::]"
    } else {
        "0.0.0.0"
    }
}

/// An address as socat's `bind=` takes it (IPv6 in brackets).
fn socat_bind(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The receiver hop for a packet no host socket takes while one on its port listens on
/// another specific address (None when none does).
pub(crate) fn on_host(snap: &Snapshot, packet: &Packet, from: &str, walk: &Walk) -> Option<Hop> {
    let host = snap.host();
    let sock = bound_elsewhere(&host.listeners, packet.proto, packet.dport, packet.dst)?;
    let local = sock.local.ip();
    let fault = fault_of(local, packet.dst);
    let owner = sock.owners.first();
    let who = owner
        .map(|o| format!("{} (pid {})", o.comm, o.pid))
        .unwrap_or_else(|| "a socket with no visible owner".into());
    let map = owner.and_then(|o| snap.proxy_target(o.pid, packet.proto, packet.dport));
    let proxies = map
        .map(|m| {
            let port = m.target_port_for(packet.dport).unwrap_or(packet.dport);
            match &m.target {
                ProxyTarget::Address { target_ip } => {
                    format!(" and proxies to {}", SocketAddr::new(*target_ip, port))
                }
                ProxyTarget::Unresolved { target_name, .. } => {
                    format!(" and proxies to {target_name}:{port}")
                }
            }
        })
        .unwrap_or_default();
    let any = wildcard_of(packet.dst);
    let dst = SocketAddr::new(packet.dst, packet.dport);
    let kind = owner
        .and_then(|o| snap.proxies.iter().find(|p| p.pid == o.pid))
        .map(|p| p.kind)
        // socat as the service itself (`EXEC:`) is no forward, but its bind= is the same.
        .or_else(|| {
            owner
                .filter(|o| o.comm == "socat")
                .map(|_| ProxyKind::Socat)
        });
    let summary = if fault == Fault::ServiceOnLoopback {
        let how = match kind {
            Some(ProxyKind::Socat) => format!("drop socat's bind={}", socat_bind(local)),
            _ => "its listen/bind setting".into(),
        };
        format!(
            "{who} listens on {} only (the host's loopback){proxies}: connections to {dst} from {from} find nothing; make it listen on {any}:{} ({how})",
            sock.local, packet.dport
        )
    } else {
        let how = match kind {
            Some(ProxyKind::Socat) => format!(
                "socat's bind={}: drop it, or bind={}",
                socat_bind(local),
                socat_bind(packet.dst)
            ),
            Some(ProxyKind::Nettool) => format!(
                "its LISTEN address {}: give the port alone, or {dst}",
                sock.local
            ),
            Some(ProxyKind::DockerProxy) => format!(
                "its -host-ip {local}, from the container's -p {}:{}:...",
                socat_bind(local),
                packet.dport
            ),
            Some(ProxyKind::Rootlessport) => format!(
                "the rootless container's -p {}:{}:...",
                socat_bind(local),
                packet.dport
            ),
            None => "its listen/bind setting".into(),
        };
        let which = if host.has_address(local) {
            "another address of the host"
        } else {
            "an address the host does not have now"
        };
        format!(
            "{who} listens on {} only ({which}){proxies}: connections to {dst} from {from} find nothing; make it listen on {any}:{} or on {dst} ({how})",
            sock.local, packet.dport
        )
    };
    let mut hop = Hop::fail(ID, TITLE, fault, summary);
    // Every socket on the port bound somewhere else, the one named first.
    let others = host.listeners.iter().filter(|s| {
        s.inode != sock.inode
            && s.proto == packet.proto
            && s.local.port() == packet.dport
            && !s.local.ip().is_unspecified()
    });
    for s in std::iter::once(sock).chain(others) {
        hop.evidence.push(format!(
            "{} {} {} owners {}",
            s.proto,
            s.state,
            s.local,
            owners_text(&s.owners)
        ));
    }
    if !local.is_loopback() && !host.has_address(local) {
        hop.evidence.push(format!(
            "{local} is not an address of {} now (the socket was bound before it went, or with IP_FREEBIND)",
            host.label
        ));
    }
    hop.evidence
        .push(format!("walk: {}", walk.outcome(&host.listeners)));
    Some(hop)
}
