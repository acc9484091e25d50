//! Hop 1: the packet as the host first sees it, and who receives it (a DNAT rule, a
//! userland proxy, a local service, or nothing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::engine::{Container, EngineKind, Intent};
use crate::facts::proxies::{ProxyKind, ProxyTarget};
use crate::facts::{From, NsFacts, Question, Snapshot};
use crate::nat::walk::Walk;
use crate::netns::links::Address;
use crate::netns::sockets::Owner;

use super::fix::Fixer;

/// The receiver hop's id.
pub(super) const ID: &str = "receiver";
/// The receiver hop's title.
pub(super) const TITLE: &str = "who receives it";
use super::{rules, Destination, DoctorError, Fault, Hop, Packet, Verdict};

/// The packet as it reaches the host, from the source and what was asked; over IPv6 when `v6`.
pub(crate) fn build_packet(
    req: &Question,
    snap: &Snapshot,
    src_ns: Option<&NsFacts>,
    v6: bool,
) -> Result<Packet, DoctorError> {
    let host = snap.host();
    // With a container target the published port is found later from its DNAT rule.
    let port = if req.container.is_some() || req.container_name.is_some() {
        Some(0)
    } else {
        req.port
    }
    .ok_or_else(|| DoctorError::Usage("say which port: nettool doctor PORT".into()))?;
    // An address of the path's family a client can use (not loopback, not link-local).
    let fam = |a: &&Address| {
        a.address.is_ipv6() == v6
            && !a.address.is_loopback()
            && !crate::facts::is_link_local(a.address)
    };
    let (localhost, unspecified, assumed) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            // 2001:db8::/32, the documentation prefix (as TEST-NET-3 is for IPv4).
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        )
    };
    Ok(match &req.from {
        From::Localhost => Packet {
            proto: req.proto,
            src: req.src.unwrap_or(localhost),
            dst: req.dst.unwrap_or(localhost),
            dport: port,
            iif: None,
            hook: "output".into(),
            src_assumed: false,
        },
        From::Host => {
            let dst = req
                .dst
                .or_else(|| host.primary_address_of(v6))
                .unwrap_or(localhost);
            Packet {
                proto: req.proto,
                src: req.src.unwrap_or(dst),
                dst,
                dport: port,
                iif: None,
                hook: "output".into(),
                src_assumed: false,
            }
        }
        From::Outside { .. } => {
            // With a client namespace: its veth into the host tells the interface and addresses.
            let mut iif = req.iif.clone();
            let mut dst = req.dst;
            let mut src = req.src;
            if let Some(c) = src_ns {
                if let Some((host_if, client_addr)) = super::family::into_host(snap, c, v6) {
                    iif.get_or_insert(host_if.name.clone());
                    if dst.is_none() {
                        dst = host
                            .addresses
                            .iter()
                            .filter(fam)
                            .find(|a| a.index == host_if.index)
                            .map(|a| a.address);
                    }
                    src = src.or(client_addr);
                }
            }
            let ext = host.external_link();
            if iif.is_none() {
                iif = ext.map(|l| l.name.clone());
            }
            let dst = dst
                .or_else(|| {
                    ext.and_then(|l| {
                        host.addresses
                            .iter()
                            .filter(fam)
                            .find(|a| a.index == l.index)
                            .map(|a| a.address)
                    })
                })
                .or_else(|| host.primary_address_of(v6))
                .unwrap_or(unspecified);
            Packet {
                proto: req.proto,
                src_assumed: src.is_none(),
                src: src.unwrap_or(assumed),
                dst,
                dport: port,
                iif,
                hook: "prerouting".into(),
            }
        }
        From::Container { .. } => {
            let c = src_ns.ok_or_else(|| DoctorError::Usage("no source namespace".into()))?;
            let (host_if, client_addr) =
                super::family::into_host(snap, c, v6).ok_or_else(|| {
                    DoctorError::Usage(format!(
                        "the source namespace {} has no veth into the host namespace {}",
                        c.label, host.label
                    ))
                })?;
            // The container reaches the host through the bridge its veth is a port of.
            let bridge = host_if.master.and_then(|m| host.link(m)).unwrap_or(host_if);
            let gw = host
                .addresses
                .iter()
                .filter(fam)
                .find(|a| a.index == bridge.index)
                .map(|a| a.address);
            Packet {
                proto: req.proto,
                src: req.src.or(client_addr).unwrap_or(unspecified),
                dst: req
                    .dst
                    .or(gw)
                    .or_else(|| host.primary_address_of(v6))
                    .unwrap_or(unspecified),
                dport: port,
                iif: Some(bridge.name.clone()),
                hook: "prerouting".into(),
                src_assumed: false,
            }
        }
    })
}

/// Hop 1: a DNAT rule or a listening process.
pub(crate) fn receiver(
    req: &Question,
    snap: &Snapshot,
    fw: &rules::Firewall,
    packet: &mut Packet,
    container: Option<&NsFacts>,
    from: &str,
    fixer: &Fixer,
) -> (Option<Destination>, Hop, Option<Walk>) {
    let host = snap.host();
    // `doctor container:web[:PORT]`: the first port published to that container (to PORT).
    if let Some(c) = container {
        let addrs: Vec<IpAddr> = c.addresses.iter().map(|a| a.address).collect();
        let published = fw
            .published_port_of(packet.proto, &addrs, req.port)
            .or_else(|| super::rootless::published_port(snap, c, packet.proto, req.port));
        match published {
            Some(p) => packet.dport = p,
            None => {
                return (
                    None,
                    Hop::fail(
                        ID,
                        TITLE,
                        Fault::NoReceiver,
                        match req.port {
                            Some(p) => format!("no DNAT rule publishes port {p} of {}", c.label),
                            None => format!("no DNAT rule publishes a port of {}", c.label),
                        },
                    )
                    .with_evidence(format!("addresses: {}", c.address_list())),
                    None,
                )
            }
        }
    }
    let packet = &*packet;
    let walk = fw.walk(packet);
    if let Some(rule) = fw.dnat_in(&walk, packet) {
        let dest = Destination {
            addr: rule.to_addr,
            port: rule.to_port.unwrap_or(packet.dport),
            via: "dnat".into(),
            rule: Some(rule.clone()),
            receiver: None,
            netns: None,
            interface: None,
        };
        let hop = Hop::ok(
            ID,
            TITLE,
            format!(
                "DNAT in {} rewrites {} to {}",
                rule.chain,
                SocketAddr::new(packet.dst, packet.dport),
                SocketAddr::new(dest.addr, dest.port)
            ),
        )
        .with_evidence(format!(
            "{} (table {}, {})",
            rule.text, rule.table, rule.backend
        ));
        return (Some(dest), hop, Some(walk));
    }
    // No DNAT for this packet: a socket on the host gets it, if one listens. 0.0.0.0 takes
    // IPv4 only; [::] takes both (unless IPV6_V6ONLY) unless a socket of the packet's own family
    // is there too.
    let takes = |s: &&crate::netns::sockets::Socket| {
        s.proto == packet.proto && s.local.port() == packet.dport && s.takes(packet.dst)
    };
    let listener = host
        .listeners
        .iter()
        .filter(takes)
        .min_by_key(|s| s.local.ip().is_ipv6() != packet.dst.is_ipv6());
    if let Some(sock) = listener {
        let owner = sock.owners.first().cloned();
        // Rootless Podman: rootlessport relays into the container's namespace (no DNAT).
        if let Some((dest, hop)) = owner
            .as_ref()
            .and_then(|o| super::rootless::relay(snap, packet, sock, o))
        {
            return (dest, hop, Some(walk));
        }
        let proxy_map = owner
            .as_ref()
            .and_then(|o| snap.proxy_target(o.pid, packet.proto, sock.local));
        let proxied = proxy_map.and_then(|m| m.target_for(packet.dport));
        let who = owner
            .as_ref()
            .map(|o| format!("{} (pid {})", o.comm, o.pid))
            .unwrap_or_else(|| "a socket with no visible owner".into());
        let mut hop = Hop::ok(
            ID,
            TITLE,
            match &proxied {
                Some(t) => format!("{who} listens on {} and proxies to {t}", sock.local),
                None => format!("{who} listens on {}", sock.local),
            },
        )
        .with_evidence(format!(
            "{} {} {} owners {}",
            sock.proto,
            sock.state,
            sock.local,
            owners_text(&sock.owners)
        ));
        if fw.has_dnat_for_port_in(packet.dst.is_ipv6(), packet.proto, packet.dport) {
            hop.evidence.push(format!(
                "a DNAT rule for {}/{} exists but does not match this packet ({} hook, from {}): {}",
                packet.proto, packet.dport, packet.hook, packet.src, walk.summary
            ));
        }
        if let Some(fail) =
            dnat_missing(req, snap, fw, packet, owner.as_ref(), proxied, &who, fixer)
        {
            let mut fail = fail;
            fail.evidence.extend(hop.evidence);
            fail.evidence
                .push(format!("walk: {}", walk.outcome(&host.listeners)));
            hop = fail;
            // A reservation never accepts: the path ends here (its socket is no service).
            if owner
                .as_ref()
                .is_some_and(|o| o.comm == "conmon" || o.comm == "dockerd")
            {
                return (None, hop, Some(walk));
            }
        }
        // A proxy to a name that does not resolve where it runs: its backend is unknown, so the path
        // ends at the proxy, with the name and where to look (not "all clear").
        let process = owner
            .as_ref()
            .and_then(|o| snap.proxies.iter().find(|p| p.pid == o.pid));
        if let (Some(m), Some(p)) = (proxy_map, process) {
            if matches!(m.target, ProxyTarget::Unresolved { .. }) {
                if hop.verdict != Verdict::Fail {
                    hop = unresolved_target(
                        hop,
                        &who,
                        sock.local,
                        p,
                        m,
                        m.target_port_for(packet.dport).unwrap_or(packet.dport),
                    );
                }
                return (None, hop, Some(walk));
            }
        }
        // A proxy to one of the host's own addresses where no socket listens: the host's
        // OUTPUT DNAT takes its connection on (a relay to a port published on 127.0.0.1 by
        // CNI portmap, which DNATs localhost too).
        let onward = proxied.and_then(|t| {
            let local = t.ip().is_loopback() || host.has_address(t.ip());
            let listened = host
                .listeners
                .iter()
                .any(|s| s.proto == packet.proto && s.local.port() == t.port() && s.takes(t.ip()));
            if !local || listened {
                return None;
            }
            let out = Packet {
                proto: packet.proto,
                src: t.ip(),
                dst: t.ip(),
                dport: t.port(),
                iif: None,
                hook: "output".into(),
                src_assumed: false,
            };
            let w = fw.walk(&out);
            fw.dnat_in(&w, &out)
        });
        if let (Some(rule), Some(t)) = (&onward, proxied) {
            hop.evidence.push(format!(
                "its connections to {t} are DNATed in {} to {}: {}",
                rule.chain,
                SocketAddr::new(rule.to_addr, rule.to_port.unwrap_or(t.port())),
                rule.text
            ));
        }
        let dest = match (proxied, onward) {
            (Some(t), Some(rule)) => Destination {
                addr: rule.to_addr,
                port: rule.to_port.unwrap_or(t.port()),
                via: "dnat".into(),
                rule: Some(rule),
                receiver: owner,
                netns: None,
                interface: None,
            },
            (Some(t), None) => Destination {
                addr: t.ip(),
                port: t.port(),
                via: "proxy".into(),
                rule: None,
                receiver: owner,
                netns: None,
                interface: None,
            },
            (None, _) => Destination {
                // A wildcard listener answers on the address the client used.
                addr: if sock.local.ip().is_unspecified() {
                    packet.dst
                } else {
                    sock.local.ip()
                },
                port: sock.local.port(),
                via: "local".into(),
                rule: None,
                receiver: owner,
                netns: Some(host.label.clone()),
                interface: None,
            },
        };
        return (Some(dest), hop, Some(walk));
    }
    // A socket on the port bound to another address (loopback or another of the host's).
    if let Some(hop) = super::bound::on_host(snap, packet, from, &walk) {
        return (None, hop, Some(walk));
    }
    let mut hop = Hop::fail(
        ID,
        TITLE,
        Fault::NoReceiver,
        format!(
            "nothing receives {}/{} from {}: no DNAT rule matches and no process listens on the host",
            packet.proto,
            packet.dport,
            from
        ),
    );
    hop.evidence
        .push(format!("walk: {}", walk.outcome(&host.listeners)));
    if fw.has_dnat_for_port_in(packet.dst.is_ipv6(), packet.proto, packet.dport) {
        hop.evidence.push(format!(
            "a DNAT rule publishes {}/{} but does not match this packet",
            packet.proto, packet.dport
        ));
        if matches!(req.from, From::Localhost) {
            hop.evidence.push(
                "Docker-style rules leave localhost (! -d 127.0.0.0/8) to a userland proxy, and none runs"
                    .into(),
            );
            // Start the proxy the rules expect, to where the DNAT rule sends everyone else.
            if let Some((addr, port)) = fw.dnat_target_for_port(packet.proto, packet.dport) {
                let to = SocketAddr::new(addr, port.unwrap_or(packet.dport));
                hop.fix = Some(fixer.fix_owned(
                    &format!(
                        "run the userland proxy for localhost:{} to {to}",
                        packet.dport
                    ),
                    vec![
                        snap.meta.exe.clone(),
                        "proxy".into(),
                        "--map".into(),
                        format!("{}:127.0.0.1:{}={to}", packet.proto, packet.dport),
                    ],
                    true,
                ));
            }
        }
    }
    if let Some(e) = &fw.error {
        hop.evidence.push(format!("rules not read: {e}"));
    }
    (None, hop, Some(walk))
}

/// The receiver's finding for a proxy whose target name does not resolve as the proxy looks
/// it up (its /etc/hosts and /etc/resolv.conf, from its network namespace; doctor's own
/// files where its cannot be read, which the evidence says): a nettool proxy keeps dialling
/// its last addresses while the name fails, socat looks the name up again for each
/// connection it takes; so its log tells when the name stopped resolving.
fn unresolved_target(
    ok: Hop,
    who: &str,
    local: SocketAddr,
    proxy: &crate::facts::ProxyProcess,
    map: &crate::facts::ProxyMap,
    port: u16,
) -> Hop {
    let pid = proxy.pid;
    let ProxyTarget::Unresolved {
        target_name: name,
        unresolved: why,
        looked_up,
    } = &map.target
    else {
        return ok;
    };
    let mut hop = Hop::fail(
        ID,
        TITLE,
        Fault::ProxyTargetUnresolved,
        format!("{who} listens on {local} and proxies to {name}:{port}, which does not resolve where it runs: {why}; its backend cannot be followed"),
    );
    hop.evidence.extend(ok.evidence);
    hop.proxy = Some(proxy.kind);
    if !looked_up.is_empty() {
        hop.evidence.push(looked_up.clone());
    }
    if proxy.kind == ProxyKind::Socat {
        hop.evidence.push(format!(
            "socat looks {name} up for each connection it takes, with the /etc/hosts and /etc/resolv.conf it sees; while it does not resolve there, it accepts each connection and closes it"
        ));
        hop.evidence.push(format!(
            "its log (stderr) says so for each connection: `E getaddrinfo(\"{name}\", ...): ...`"
        ));
    } else {
        hop.evidence.push(format!(
            "the proxy resolved {name} at its start and resolves it again while it runs, with the /etc/hosts and /etc/resolv.conf it sees; while it does not resolve, it dials the last addresses it had"
        ));
        hop.evidence.push(format!(
            "its log says which: `{name} now resolves to ...` or `{name} does not resolve now (...)`"
        ));
    }
    hop.evidence.push(format!(
        "check the name as the proxy sees it: `nsenter --target {pid} --mount --net getent hosts {name}`; and here: `getent hosts {name}`, `dig {name}`"
    ));
    hop
}

pub(crate) fn owners_text(o: &[Owner]) -> String {
    if o.is_empty() {
        return "-".into();
    }
    o.iter()
        .map(|o| format!("{}/{}", o.pid, o.comm))
        .collect::<Vec<_>>()
        .join(",")
}

/// conmon holds the port and no DNAT rule leads to a container, but Podman's API was not read
/// (no socket, or it failed): without the engine's intent a firewall reload that flushed
/// netavark's rules looks the same as a stopped, paused or disconnected container, and
/// `podman network reload --all` fixes only the first. The fix starts the API where doctor
/// looked for it, so the next run can tell.
fn podman_unasked(
    intent: Option<&crate::engine::Intent>,
    packet: &Packet,
    who: &str,
    fixer: &Fixer,
) -> Option<Hop> {
    let sources = intent.map(|i| i.sources.as_slice()).unwrap_or_default();
    if sources
        .iter()
        .any(|s| s.engine == EngineKind::Podman && s.error.is_none())
    {
        return None;
    }
    let failed = sources
        .iter()
        .find(|s| s.engine == EngineKind::Podman && s.error.is_some());
    let socket = failed
        .map(|s| s.endpoint.clone())
        .unwrap_or_else(|| crate::engine::podman::ROOTFUL_SOCKET.to_string());
    let why = match failed.and_then(|s| s.error.as_deref()) {
        Some(e) => format!("Podman's API at {socket} failed: {e}"),
        None => format!("Podman's API is not running (no {socket})"),
    };
    Some(
        Hop::fail(
            ID,
            TITLE,
            Fault::EngineUnreachable,
            format!(
                "{who} only reserves {}/{} for a Podman container and no DNAT rule sends connections past it, so they hang; {why}, so doctor cannot tell netavark's rules flushed by a firewall reload from a container that is stopped, paused or disconnected: start the API and run doctor again",
                packet.proto, packet.dport
            ),
        )
        .with_fix(Some(fixer.fix_owned(
            "start Podman's API service, then run doctor again",
            vec![
                "podman".into(),
                "system".into(),
                "service".into(),
                "--time=0".into(),
                format!("unix://{socket}"),
            ],
            true,
        ))),
    )
}

/// The container of `engine` that publishes the packet's port (its protocol and host port).
fn publisher<'a>(
    intent: Option<&'a Intent>,
    engine: EngineKind,
    packet: &Packet,
) -> Option<&'a Container> {
    let proto = packet.proto.to_string();
    intent?.containers.iter().find(|c| {
        c.engine == engine
            && c.ports
                .iter()
                .any(|b| b.host_port == packet.dport && b.proto == proto)
    })
}

/// A port the engine publishes with DNAT, held instead by its userland proxy (docker-proxy:
/// the connection works but the container sees the bridge address instead of its clients)
/// or by a reservation socket that never accepts (Podman's conmon): the DNAT rule is gone,
/// usually flushed by a firewall reload. The engine re-creates it.
#[allow(clippy::too_many_arguments)]
fn dnat_missing(
    req: &Question,
    snap: &Snapshot,
    fw: &rules::Firewall,
    packet: &Packet,
    owner: Option<&Owner>,
    proxied: Option<SocketAddr>,
    who: &str,
    fixer: &Fixer,
) -> Option<Hop> {
    let owner = owner?;
    let kind = snap
        .proxies
        .iter()
        .find(|p| p.pid == owner.pid)
        .map(|p| p.kind);
    let intent = snap.intent.as_ref();
    let port = packet.dport;
    if owner.comm == "conmon" {
        if let Some(hop) = podman_unasked(intent, packet, who, fixer) {
            return Some(hop);
        }
        let c = publisher(intent, EngineKind::Podman, packet);
        return Some(
            Hop::fail(
                ID,
                TITLE,
                Fault::DnatMissing,
                format!(
                    "netavark's DNAT rule for {}/{port} is missing{}: {who} only reserves the port (it never accepts), so connections hang; a firewall reload flushes netavark's rules",
                    packet.proto,
                    c.map(|c| format!(" (podman container {})", c.name)).unwrap_or_default()
                ),
            )
            .with_fix(Some(fixer.fix(
                "have netavark write its rules again",
                &["podman", "network", "reload", "--all"],
            ))),
        );
    }
    // dockerd with the userland proxy off holds each published port itself, as a reservation
    // that never accepts: with its DNAT rule gone, connections hang.
    if owner.comm == "dockerd" {
        let c = publisher(intent, EngineKind::Docker, packet);
        let name = c.map(|c| c.name.clone());
        return Some(
            Hop::fail(
                ID,
                TITLE,
                Fault::DnatMissing,
                format!(
                    "Docker's DNAT rule for {}/{port} is missing{}: {who} only reserves the port (the userland proxy is off; it never accepts), so connections hang",
                    packet.proto,
                    name.as_deref()
                        .map(|n| format!(" (docker container {n})"))
                        .unwrap_or_default()
                ),
            )
            .with_fix(name.map(|n| {
                fixer.fix(
                    &format!("restart {n}: Docker writes its port rules again when it starts"),
                    &["docker", "restart", &n],
                )
            })),
        );
    }
    // Docker's userland proxy is meant for localhost and for containers on the bridge;
    // everyone else is meant to be DNATed.
    if kind != Some(ProxyKind::DockerProxy)
        || packet.dst.is_loopback()
        || matches!(req.from, From::Container { .. })
    {
        return None;
    }
    // Over IPv6 Docker DNATs only with --ip6tables (its DOCKER chain in the IPv6 nat table);
    // without it docker-proxy on [::] is how Docker publishes the port.
    if packet.dst.is_ipv6() && !docker_writes_ip6tables(fw) {
        return None;
    }
    let c = intent.and_then(|i| {
        i.containers.iter().find(|c| {
            c.engine == EngineKind::Docker
                && proxied.is_some_and(|t| {
                    c.attachments.iter().any(|a| {
                        a.ipv4.map(IpAddr::V4) == Some(t.ip())
                            || a.ipv6.map(IpAddr::V6) == Some(t.ip())
                    })
                })
        })
    });
    let gw = snap
        .host()
        .route_to(proxied?.ip())
        .ok()
        .and_then(|r| r.prefsrc)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "the bridge address".into());
    let name = c.map(|c| c.name.clone());
    Some(
        Hop::fail(
            ID,
            TITLE,
            Fault::DnatMissing,
            format!(
                "Docker's DNAT rule for {}/{port} is missing: {who} took over, so {} sees every client as {gw}, not its real address",
                packet.proto,
                name.as_deref().unwrap_or("the container")
            ),
        )
        .with_fix(name.map(|n| {
            fixer.fix(
                &format!("restart {n}: Docker writes its port rules again when it starts"),
                &["docker", "restart", &n],
            )
        })),
    )
}

/// True when Docker writes IPv6 NAT rules (dockerd --ip6tables): its DOCKER chain is in the
/// IPv6 nat table.
fn docker_writes_ip6tables(fw: &rules::Firewall) -> bool {
    fw.rs6
        .tables
        .iter()
        .filter(|t| t.name == "nat")
        .any(|t| t.chain("DOCKER").is_some())
}
