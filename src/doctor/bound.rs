//! A listener on the port that is bound to one address the client does not use: the host's
//! loopback (`socat ...,bind=127.0.0.1`, a service's localhost default) or another specific
//! address (`bind=10.0.0.1`, `http.server --bind`, a `nettool proxy 10.0.0.1:8080=...`), or
//! `[::]` with IPV6_V6ONLY for a client over IPv4.
//! That is the one cause, said with the process, where it listens and how to make it listen
//! where the client arrives; not "nothing receives" / "nothing listens", which send the
//! reader looking for a missing process.

use std::net::{IpAddr, SocketAddr};

use crate::facts::proxies::{ProxyKind, ProxyTarget};
use crate::facts::Snapshot;
use crate::nat::walk::Walk;
use crate::netns::sockets::{Owner, Proto, Socket};

use super::receiver::{owners_text, ID, TITLE};
use super::{Fault, Hop, Packet};

/// The socket on `proto`/`port` bound to one specific address (not a wildcard), or a `[::]`
/// one with IPV6_V6ONLY, that a packet to `dst` does not reach. A loopback one first (when
/// `dst` is not loopback: the commonest cause, with its own fault), then one of `dst`'s family.
pub(crate) fn bound_elsewhere<'a>(
    listeners: impl IntoIterator<Item = &'a Socket>,
    proto: Proto,
    port: u16,
    dst: IpAddr,
) -> Option<&'a Socket> {
    listeners
        .into_iter()
        .filter(|s| misses(s, proto, port, dst))
        .min_by_key(|s| {
            (
                fault_of(s, dst) != Fault::ServiceOnLoopback,
                s.local.is_ipv6() != dst.is_ipv6(),
                s.local.ip().is_unspecified(),
            )
        })
}

/// True for a listener on `proto`/`port` that a packet to `dst` does not reach because of
/// where it is bound: a specific other address, or `[::]` IPv6 only for an IPv4 `dst`.
fn misses(s: &Socket, proto: Proto, port: u16, dst: IpAddr) -> bool {
    s.proto == proto
        && s.local.port() == port
        && (!s.local.ip().is_unspecified() || s.v6only)
        && !s.takes(dst)
}

/// The fault of a listener `sock` that a client of `dst` does not reach: loopback has its
/// own (the usual localhost default), a `[::]` with IPV6_V6ONLY takes IPv6 only; any other
/// specific address is the general one.
pub(crate) fn fault_of(sock: &Socket, dst: IpAddr) -> Fault {
    let local = sock.local.ip();
    if local.is_unspecified() {
        Fault::ServiceIpv6Only
    } else if local.is_loopback() && !dst.is_loopback() {
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

/// Which listener `owner` is, for the words of its listen setting: a proxy doctor recognised,
/// or socat serving by itself (`EXEC:`), whose bind= is the same.
pub(crate) fn kind_of(snap: &Snapshot, owner: Option<&Owner>) -> Option<ProxyKind> {
    let owner = owner?;
    snap.proxies
        .iter()
        .find(|p| p.pid == owner.pid)
        .map(|p| p.kind)
        .or_else(|| (owner.comm == "socat").then_some(ProxyKind::Socat))
}

/// How to make listener `sock` (a `kind`) take connections to `dst`, in its own terms:
/// socat's bind= or ipv6-v6only=, a nettool proxy's LISTEN address, docker-proxy's -host-ip,
/// else its listen/bind setting. The one wording for the host's listeners and a container's.
pub(crate) fn setting(kind: Option<ProxyKind>, sock: &Socket, dst: SocketAddr) -> String {
    let local = sock.local.ip();
    let port = dst.port();
    match fault_of(sock, dst.ip()) {
        Fault::ServiceOnLoopback => match kind {
            Some(ProxyKind::Socat) => format!("drop socat's bind={}", socat_bind(local)),
            Some(ProxyKind::Nettool) => {
                format!("its LISTEN address {}: give the port alone", sock.local)
            }
            _ => "its listen/bind setting".into(),
        },
        Fault::ServiceIpv6Only => match kind {
            Some(ProxyKind::Socat) => {
                "socat's ipv6only=1 (ipv6-v6only=1): drop it, or give ipv6-v6only=0".into()
            }
            Some(ProxyKind::Nettool) => format!(
                "its LISTEN address {}, bound IPv6 only: give the port alone (both families), or add 0.0.0.0:{port}",
                sock.local
            ),
            Some(ProxyKind::DockerProxy) => format!(
                "its -host-ip ::, from the container's -p [::]:{port}:...: publish on 0.0.0.0:{port} too"
            ),
            Some(ProxyKind::Rootlessport | ProxyKind::Rootlesskit) => format!(
                "the rootless container's -p [::]:{port}:...: publish on 0.0.0.0:{port} too"
            ),
            None => "its listen/bind setting: IPV6_V6ONLY off, which sysctl net.ipv6.bindv6only=1 sets by default".into(),
        },
        _ => match kind {
            Some(ProxyKind::Socat) => format!(
                "socat's bind={}: drop it, or bind={}",
                socat_bind(local),
                socat_bind(dst.ip())
            ),
            Some(ProxyKind::Nettool) => format!(
                "its LISTEN address {}: give the port alone, or {dst}",
                sock.local
            ),
            Some(ProxyKind::DockerProxy) => format!(
                "its -host-ip {local}, from the container's -p {}:{port}:...",
                socat_bind(local)
            ),
            Some(ProxyKind::Rootlessport | ProxyKind::Rootlesskit) => format!(
                "the rootless container's -p {}:{port}:...",
                socat_bind(local)
            ),
            None => "its listen/bind setting".into(),
        },
    }
}

/// The receiver hop for a packet no host socket takes while one on its port listens on
/// another specific address (None when none does).
pub(crate) fn on_host(snap: &Snapshot, packet: &Packet, from: &str, walk: &Walk) -> Option<Hop> {
    let host = snap.host();
    let sock = bound_elsewhere(&host.listeners, packet.proto, packet.dport, packet.dst)?;
    let local = sock.local.ip();
    let fault = fault_of(sock, packet.dst);
    let owner = sock.owners.first();
    let who = owner
        .map(|o| format!("{} (pid {})", o.comm, o.pid))
        .unwrap_or_else(|| "a socket with no visible owner".into());
    let map = owner.and_then(|o| snap.proxy_target(o.pid, packet.proto, sock.local));
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
    let how = setting(kind_of(snap, owner), sock, dst);
    let summary = match fault {
        Fault::ServiceOnLoopback => format!(
            "{who} listens on {} only (the host's loopback){proxies}: connections to {dst} from {from} find nothing; make it listen on {any}:{} ({how})",
            sock.local, packet.dport
        ),
        Fault::ServiceIpv6Only => format!(
            "{who} listens on {} with IPV6_V6ONLY set, IPv6 only{proxies}: connections over IPv4 to {dst} from {from} find nothing; make it listen on 0.0.0.0:{} too, or on {} with IPV6_V6ONLY off ({how})",
            sock.local, packet.dport, sock.local
        ),
        _ => {
            let which = if host.has_address(local) {
                "another address of the host"
            } else {
                "an address the host does not have now"
            };
            format!(
                "{who} listens on {} only ({which}){proxies}: connections to {dst} from {from} find nothing; make it listen on {any}:{} or on {dst} ({how})",
                sock.local, packet.dport
            )
        }
    };
    let mut hop = Hop::fail(ID, TITLE, fault, summary);
    // Every socket on the port bound somewhere else, the one named first.
    let others = host
        .listeners
        .iter()
        .filter(|s| s.inode != sock.inode && misses(s, packet.proto, packet.dport, packet.dst));
    for s in std::iter::once(sock).chain(others) {
        hop.evidence.push(format!(
            "{} {} {}{} owners {}",
            s.proto,
            s.state,
            s.local,
            if s.v6only { " IPV6_V6ONLY" } else { "" },
            owners_text(&s.owners)
        ));
    }
    if fault == Fault::ServiceOnOtherAddress && !host.has_address(local) {
        hop.evidence.push(format!(
            "{local} is not an address of {} now (the socket was bound before it went, or with IP_FREEBIND)",
            host.label
        ));
    }
    hop.evidence
        .push(format!("walk: {}", walk.outcome(&host.listeners)));
    Some(hop)
}
