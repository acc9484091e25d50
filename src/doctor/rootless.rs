//! Rootless Podman: rootlessport holds the published port where `podman run` ran and relays
//! each connection to its child in the container's namespace, which dials the container's
//! slirp4netns address there. No DNAT, no veth: the path goes from the listener straight to
//! the service inside that namespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::engine::{Container, EngineKind};
use crate::facts::proxies::{ProxyKind, RootlessPort};
use crate::facts::{NsFacts, Snapshot};
use crate::netns::sockets::{Owner, Proto, Socket};

use super::receiver::owners_text;
use super::{Destination, Fault, Hop, Packet};

const ID: &str = "receiver";
const TITLE: &str = "who receives it";

/// The hop for a port rootlessport holds, and where it relays (None for a rootlessport whose
/// container namespace is not in the snapshot: the hop says so and the path ends there).
/// None when `owner` is not a rootlessport.
pub(crate) fn relay(
    snap: &Snapshot,
    packet: &Packet,
    sock: &Socket,
    owner: &Owner,
) -> Option<(Option<Destination>, Hop)> {
    let proxy = snap
        .proxies
        .iter()
        .find(|p| p.pid == owner.pid && p.kind == ProxyKind::Rootlessport)?;
    let who = format!("rootlessport (pid {}, user {})", owner.pid, user_of(proxy));
    let listener = format!(
        "{} {} {} owners {}",
        sock.proto,
        sock.state,
        sock.local,
        owners_text(&sock.owners)
    );
    let Some(r) = &proxy.rootless else {
        let hop = Hop::fail(
            ID,
            TITLE,
            Fault::TargetNotFound,
            format!(
                "{who} listens on {} but holds no container namespace: the container it relayed to is gone",
                sock.local
            ),
        )
        .with_evidence(listener);
        return Some((None, hop));
    };
    let Some(ns) = snap.namespaces.iter().find(|n| n.id.inode == r.netns_inode) else {
        let hop = Hop::fail(
            ID,
            TITLE,
            Fault::TargetNotFound,
            format!(
                "{who} listens on {} and relays into the namespace {}, which doctor could not read",
                sock.local, r.netns_path
            ),
        )
        .with_evidence(listener);
        return Some((None, hop));
    };
    let container = container_of(snap, r);
    let (port, port_from) = container_port(snap, packet, ns, container, r);
    let (addr, interface) = slirp_address(ns);
    let to = SocketAddr::new(addr, port);
    let mut hop = Hop::ok(
        ID,
        TITLE,
        format!(
            "{who} listens on {} and relays to {to} in {} (rootless Podman: its child rootlessport-child dials it inside the container's namespace)",
            sock.local, ns.label
        ),
    )
    .with_evidence(listener)
    .with_evidence(format!(
        "it holds the container's namespace file {} (inode {}); XDG_RUNTIME_DIR={}",
        r.netns_path,
        r.netns_inode,
        r.runtime_dir.as_deref().unwrap_or("(not in its environment)")
    ))
    .with_evidence(port_from);
    hop.proxy = Some(ProxyKind::Rootlessport);
    let dest = Destination {
        addr,
        port,
        via: "rootlessport".into(),
        rule: None,
        receiver: Some(owner.clone()),
        netns: Some(ns.label.clone()),
        interface,
    };
    Some((Some(dest), hop))
}

/// The host port rootlessport publishes for container namespace `ctr` (`doctor
/// container:NAME[:PORT]` on a rootless host, where no DNAT rule says it): with PORT, the one
/// the engine binds to that container port, else the one rootlessport holds when it holds
/// one (the user's API not asked); without PORT, the lowest it holds.
pub(crate) fn published_port(
    snap: &Snapshot,
    ctr: &NsFacts,
    proto: Proto,
    container_port: Option<u16>,
) -> Option<u16> {
    let relays: Vec<u32> = snap
        .proxies
        .iter()
        .filter(|p| {
            p.rootless
                .as_ref()
                .is_some_and(|r| r.netns_inode == ctr.id.inode)
        })
        .map(|p| p.pid)
        .collect();
    let mut held: Vec<u16> = snap
        .host()
        .listeners
        .iter()
        .filter(|s| s.proto == proto && s.owners.iter().any(|o| relays.contains(&o.pid)))
        .map(|s| s.local.port())
        .collect();
    held.sort_unstable();
    held.dedup();
    let Some(want) = container_port else {
        return held.first().copied();
    };
    let engine = snap.intent.as_ref().and_then(|i| {
        i.containers
            .iter()
            .find(|c| c.netns_inode == Some(ctr.id.inode))
    });
    match (engine, held.as_slice()) {
        (Some(c), _) => c
            .ports
            .iter()
            .find(|b| {
                b.proto == proto.to_string()
                    && b.container_port == want
                    && held.contains(&b.host_port)
            })
            .map(|b| b.host_port),
        // Without the user's API the mapping is not known: its one port, if it holds one.
        (None, [only]) => Some(*only),
        (None, _) => None,
    }
}

/// The user a rootlessport runs as, by name.
fn user_of(p: &crate::facts::ProxyProcess) -> String {
    p.rootless
        .as_ref()
        .map(|r| crate::engine::podman::user_name(r.uid))
        .unwrap_or_else(|| "?".into())
}

/// The engine's container in rootlessport's namespace, when the user's Podman was asked.
fn container_of<'a>(snap: &'a Snapshot, r: &RootlessPort) -> Option<&'a Container> {
    snap.intent.as_ref()?.containers.iter().find(|c| {
        c.engine == EngineKind::Podman && c.netns_inode == Some(r.netns_inode) && c.state.is_up()
    })
}

/// The container port of the packet's host port, and where that came from: the engine's
/// binding; without the user's API, the one port that listens in the namespace (the mapping
/// reaches rootlessport on a pipe, not in its command line); else the host port, said so.
fn container_port(
    snap: &Snapshot,
    packet: &Packet,
    ns: &NsFacts,
    container: Option<&Container>,
    r: &RootlessPort,
) -> (u16, String) {
    let proto = packet.proto.to_string();
    if let Some(c) = container {
        if let Some(b) = c
            .ports
            .iter()
            .find(|b| b.proto == proto && b.host_port == packet.dport)
        {
            return (
                b.container_port,
                format!(
                    "podman container {} publishes {}->{}/{} (its user's Podman API)",
                    c.name, b.host_port, b.container_port, b.proto
                ),
            );
        }
    }
    let socket = r
        .runtime_dir
        .as_ref()
        .map(|d| format!("{d}/{}", crate::engine::podman::ROOTLESS_SOCKET))
        .unwrap_or_else(|| "$XDG_RUNTIME_DIR/podman/podman.sock".into());
    let unasked = match snap.intent.as_ref().and_then(|i| {
        i.sources
            .iter()
            .find(|s| s.endpoint.ends_with(&socket) || s.endpoint == socket)
    }) {
        Some(s) => format!(
            "the user's Podman at {socket} could not be asked ({})",
            s.error.as_deref().unwrap_or("it does not know this container")
        ),
        None => format!(
            "the user's Podman API is not serving at {socket} (`podman system service` as that user serves it)"
        ),
    };
    let mut ports: Vec<u16> = ns
        .listeners
        .iter()
        .filter(|s| s.proto == packet.proto && s.is_listening())
        .map(|s| s.local.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [only] => (
            *only,
            format!(
                "{unasked}: container port {only} is the one port that listens in {} (rootlessport gets its mapping on a pipe, not in its command line)",
                ns.label
            ),
        ),
        _ => (
            packet.dport,
            format!(
                "{unasked}: the container port is taken to be {} (rootlessport gets its mapping on a pipe, not in its command line)",
                packet.dport
            ),
        ),
    }
}

/// The address rootlessport-child dials: slirp4netns's tap0 address (10.0.2.100 by default),
/// the namespace's first IPv4 address that is not loopback otherwise.
fn slirp_address(ns: &NsFacts) -> (IpAddr, Option<String>) {
    let v4 = |a: &&crate::netns::links::Address| a.address.is_ipv4() && !a.address.is_loopback();
    let on_tap = ns
        .addresses
        .iter()
        .filter(v4)
        .find(|a| ns.link(a.index).is_some_and(|l| l.name == "tap0"));
    match on_tap.or_else(|| ns.addresses.iter().find(v4)) {
        Some(a) => (a.address, ns.link(a.index).map(|l| l.name.clone())),
        None => (IpAddr::V4(Ipv4Addr::new(10, 0, 2, 100)), None),
    }
}
