//! Rootless engines: a relay process holds the published port on the host and carries each
//! connection into a namespace of the user's. Rootless Podman's rootlessport relays into the
//! container's namespace, where its child dials the container's slirp4netns address: no
//! DNAT, no veth, the path goes from the listener straight to the service. Rootless Docker's
//! rootlesskit (builtin port driver) relays into its child namespace, where its child dials
//! 127.0.0.1:PORT: that namespace is a Docker host of its own, judged as one
//! ([`super::judge`] with [`crate::facts::Snapshot::relayed_host`]).

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
    let proxy = snap.proxies.iter().find(|p| {
        p.pid == owner.pid && matches!(p.kind, ProxyKind::Rootlessport | ProxyKind::Rootlesskit)
    })?;
    let who = format!(
        "{} (pid {}, user {})",
        proxy.kind,
        owner.pid,
        user_of(proxy)
    );
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
    if proxy.kind == ProxyKind::Rootlesskit {
        return Some(kit_relay(packet, sock, owner, &who, listener, r, ns));
    }
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

/// rootlesskit's hop: its child dials 127.0.0.1:PORT in the child namespace (the port it was
/// asked to expose; rootlesskit-docker-proxy binds docker-proxy there), where dockerd's rules
/// and proxies take it.
fn kit_relay(
    packet: &Packet,
    sock: &Socket,
    owner: &Owner,
    who: &str,
    listener: String,
    r: &RootlessPort,
    ns: &NsFacts,
) -> (Option<Destination>, Hop) {
    let addr = if packet.dst.is_ipv6() {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let to = SocketAddr::new(addr, packet.dport);
    let mut hop = Hop::ok(
        ID,
        TITLE,
        format!(
            "{who} listens on {} and relays to {to} in its child namespace {} (rootless Docker: dockerd's rules and docker-proxy are there)",
            sock.local, ns.label
        ),
    )
    .with_evidence(listener)
    .with_evidence(format!(
        "its child's namespace {} (inode {}); XDG_RUNTIME_DIR={}",
        r.netns_path,
        r.netns_inode,
        r.runtime_dir.as_deref().unwrap_or("(not in its environment)")
    ));
    hop.proxy = Some(ProxyKind::Rootlesskit);
    let dest = Destination {
        addr,
        port: packet.dport,
        via: "rootlesskit".into(),
        rule: None,
        receiver: Some(owner.clone()),
        netns: Some(ns.label.clone()),
        interface: None,
    };
    (Some(dest), hop)
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

/// Rootless Docker: when rootlesskit holds the asked port on the host (or, for `doctor
/// container:NAME`, runs the user's dockerd that runs that container), its child
/// namespace read as a host of its own with the question a connection from rootlesskit's
/// child makes there (localhost to the same port, or to that container's published port).
/// None when no rootlesskit does, or its namespace cannot be read (the relay hop then ends
/// the path there).
pub(crate) fn read_relayed(snap: &Snapshot, q: &crate::facts::Question) -> Option<Box<Snapshot>> {
    let kits = || {
        snap.proxies
            .iter()
            .filter(|p| p.kind == ProxyKind::Rootlesskit)
            .filter_map(|p| Some((p.pid, p.rootless.as_ref()?)))
    };
    let r = match (q.container, q.port) {
        // The user's dockerd in this rootlesskit runs that container (its namespace has no
        // veth into the host).
        (Some(ctr), _) => kits().find_map(|(_, r)| {
            let dir = std::path::Path::new(r.runtime_dir.as_deref()?);
            snap.intent
                .as_ref()?
                .containers
                .iter()
                .any(|c| {
                    c.engine == EngineKind::Docker
                        && c.netns_inode == Some(ctr.inode)
                        && c.rootless.as_ref().is_some_and(|o| o.runtime_dir == dir)
                })
                .then_some(r)
        }),
        (None, Some(port)) => snap
            .host()
            .listeners
            .iter()
            .filter(|s| s.proto == q.proto && s.local.port() == port)
            .flat_map(|s| s.owners.iter())
            .find_map(|o| kits().find(|(pid, _)| *pid == o.pid).map(|(_, r)| r)),
        (None, None) => None,
    }?;
    let ns = crate::netns::NetNs::from_path(&r.netns_path).ok()?;
    let mut inner = crate::facts::read(&crate::facts::ReadOptions {
        host: ns,
        extra: Vec::new(),
        skip_docker: false,
        conntrack: true,
    })
    .ok()?;
    inner.question = Some(crate::facts::Question {
        proto: q.proto,
        port: q.port,
        dst: None,
        src: None,
        iif: None,
        from: crate::facts::From::Localhost,
        container: q.container,
        container_name: q.container_name.clone(),
        host_name: None,
        host_path: Some(r.netns_path.clone()),
    });
    Some(Box::new(inner))
}

/// `doctor container:NAME[:PORT]` for a rootless Docker container: the host port is the one
/// dockerd publishes it on in rootlesskit's namespace (no rule on the host names it), and
/// the host is asked about that port, followed through rootlesskit as any other. None when
/// the question is not about a container behind a rootlesskit.
pub(crate) fn relayed_container(
    snap: &Snapshot,
    q: &crate::facts::Question,
) -> Option<Result<super::Report, super::DoctorError>> {
    q.container?;
    let inner = snap.relayed_host.as_deref()?;
    let iq = inner
        .question
        .as_ref()
        .filter(|iq| iq.container.is_some())?;
    let port = match super::judge(inner, iq) {
        Ok(r) => r.packet.map(|p| p.dport).filter(|p| *p != 0)?,
        Err(e) => return Some(Err(e)),
    };
    let mut host_q = q.clone();
    host_q.container = None;
    host_q.container_name = None;
    host_q.port = Some(port);
    Some(super::judge(snap, &host_q))
}

/// The report of a path rootlesskit relays into its child namespace: the host's hops up to
/// rootlesskit (its own listener is not the service), then the child namespace's, judged as
/// the Docker host it is; the host's probe is the one that counts. `outer` unchanged when no
/// rootlesskit relays its packet or its namespace was not read.
pub(crate) fn through_rootlesskit(
    snap: &Snapshot,
    outer: super::Report,
) -> Result<super::Report, super::DoctorError> {
    let relayed = outer
        .destination
        .as_ref()
        .is_some_and(|d| d.via == "rootlesskit");
    let (true, Some(inner)) = (relayed, snap.relayed_host.as_deref()) else {
        return Ok(outer);
    };
    let Some(q) = inner.question.as_ref() else {
        return Ok(outer);
    };
    let mut r = super::judge(inner, q)?;
    let mut hops: Vec<Hop> = outer
        .hops
        .into_iter()
        // Its own listener is not the service, the engine is judged where it runs, and the
        // route to 127.0.0.1 is the child namespace's to judge.
        .filter(|h| !matches!(h.id.as_str(), "service" | "engine" | "route"))
        .collect();
    hops.append(&mut r.hops);
    r.hops = hops;
    r.host_netns = outer.host_netns;
    r.from = outer.from;
    r.packet = outer.packet;
    r.probe = outer.probe;
    r.ipv6 = None;
    r.reads = outer.reads;
    r.diagnosis = super::conclude(&r);
    Ok(r)
}
