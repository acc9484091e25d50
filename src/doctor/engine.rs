//! Intended vs actual in the engine's words: the container the engine publishes this port for,
//! whether it runs, whether it is on a network, and on which host address the port is
//! published. Each fault here is the cause; what follows from it is not a second fault.

use std::net::IpAddr;

use crate::engine::{Container, ContainerState, EngineKind, PortBinding};
use crate::facts::{Question, Snapshot};
use crate::netns::sockets::Proto;

use super::fix::Fixer;
use super::rules::Firewall;
use super::{Fault, Hop, Packet};

const ID: &str = "engine";
const TITLE: &str = "engine intent";

/// The engine's container for the question, and its binding for the port.
pub(crate) fn intended<'a>(
    snap: &'a Snapshot,
    fw: &Firewall,
    q: &Question,
    proto: Proto,
    port: u16,
    v6: bool,
) -> Option<(&'a Container, Option<&'a PortBinding>)> {
    let intent = snap.intent.as_ref()?;
    let proto_kind = proto;
    let proto = proto.to_string();
    // Docker lists a port published on every address twice (0.0.0.0 and ::): the binding of
    // the family judged is the one its words and checks are about.
    let binds = |c: &'a Container| {
        c.ports
            .iter()
            .filter(|b| b.proto == proto && (port == 0 || b.host_port == port))
            .min_by_key(|b| b.host_ip.is_some_and(|i| i.is_ipv6() != v6))
    };
    if let Some(name) = &q.container_name {
        let c = intent.container(name)?;
        // A kubelet log link names a pod's container and says nothing of ports or state: what
        // Kubernetes intends for a port is in kube-proxy's rules, which the receiver hop reads.
        if c.engine == EngineKind::Kubernetes {
            return None;
        }
        let b = match q.port {
            Some(p) => c
                .ports
                .iter()
                .filter(|b| b.proto == proto && b.container_port == p)
                .min_by_key(|b| b.host_ip.is_some_and(|i| i.is_ipv6() != v6)),
            None => binds(c),
        };
        return Some((c, b));
    }
    // Several containers may claim the port (an old one stopped, a new one running; a libcni
    // cache entry a crashed runtime left next to the live attachment): the one that counts
    // runs, has its namespace, is where the DNAT sends the port, and listens there.
    let mut claim: Vec<&Container> = intent
        .containers
        .iter()
        .filter(|c| c.engine != EngineKind::Lab && binds(c).is_some())
        .collect();
    if claim.len() > 1 {
        claim.sort_by_cached_key(|c| claim_rank(snap, fw, proto_kind, c, binds(c)));
    }
    let c = claim.first()?;
    Some((c, binds(c)))
}

/// How little a claim on a port holds up (sorted ascending, so each `true` loses): not
/// running, no namespace in the snapshot, no DNAT of the port to its address, nothing
/// listening on its container port.
fn claim_rank(
    snap: &Snapshot,
    fw: &Firewall,
    proto: Proto,
    c: &Container,
    b: Option<&PortBinding>,
) -> (bool, bool, bool, bool) {
    let ns = snap
        .namespaces
        .iter()
        .find(|n| c.netns_inode == Some(n.id.inode) || n.containers.iter().any(|r| r.id == c.id));
    let addrs: Vec<IpAddr> = c
        .attachments
        .iter()
        .flat_map(|a| a.addresses())
        .filter(|a| ns.is_none_or(|n| n.has_address(*a)))
        .collect();
    let dnat = b.is_some_and(|b| fw.dnat_sends_port_to(proto, b.host_port, &addrs));
    let listens = match (ns, b) {
        (Some(n), Some(b)) => n
            .listeners
            .iter()
            .any(|s| s.proto == proto && s.is_listening() && s.local.port() == b.container_port),
        _ => false,
    };
    (
        c.state != ContainerState::Running,
        ns.is_none(),
        !dnat,
        !listens,
    )
}

/// The engine's command for `c`; a rootless engine's runs as its user, with its runtime
/// directory (as root, `podman` or `docker` would ask root's own engine, which does not know
/// the container).
fn cli_fix(fixer: &Fixer, c: &Container, summary: &str, verb: &[&str]) -> super::Fix {
    let mut cmd = vec![c.engine.cli()];
    cmd.extend(verb);
    let argv = match &c.rootless {
        Some(owner) => owner.run_as(&cmd),
        None => cmd.iter().map(|s| s.to_string()).collect(),
    };
    let summary = match &c.rootless {
        Some(owner) => format!(
            "{summary} (rootless {} of {})",
            match c.engine {
                EngineKind::Docker => "Docker",
                _ => "Podman",
            },
            owner.user
        ),
        None => summary.to_string(),
    };
    fixer.fix_owned(&summary, argv, false)
}

/// A binding as the engine lists it, its host address in the family judged (`v6`): a port
/// published on every address is on [::] over IPv6, not 0.0.0.0.
fn published(b: Option<&PortBinding>, v6: bool) -> String {
    match b {
        Some(b) => format!(
            "{}:{}->{}/{}",
            match b.host_ip {
                Some(IpAddr::V6(i)) => format!("[{i}]"),
                Some(i) => i.to_string(),
                None if v6 => "[::]".into(),
                None => "0.0.0.0".into(),
            },
            b.host_port,
            b.container_port,
            b.proto
        ),
        None => "no port".into(),
    }
}

/// The bindings shown for the families judged, IPv4 first: `b` in the packet's family, and
/// `other` (the other family's, when doctor follows a dual-stack port over both) beside it.
fn listing(b: Option<&PortBinding>, other: Option<Option<&PortBinding>>, v6: bool) -> String {
    let this = published(b, v6);
    let Some(other) = other else {
        return this;
    };
    let that = published(other, !v6);
    if that == this {
        return this;
    }
    let (v4, v6) = if v6 { (that, this) } else { (this, that) };
    format!("{v4} and {v6}")
}

/// The engine's view, judged: the first fault in it, or an ok hop that says what is intended.
/// `other` is the binding of the other address family when both are followed: the hop is
/// shared by the two paths, so it shows the listing of each.
pub(crate) fn intent_hop(
    snap: &Snapshot,
    c: &Container,
    b: Option<&PortBinding>,
    other: Option<Option<&PortBinding>>,
    packet: &Packet,
    fixer: &Fixer,
) -> Hop {
    let exe = snap.meta.exe.as_str();
    let who = match &c.rootless {
        Some(o) => format!(
            "{} container {} (rootless, user {})",
            c.engine, c.name, o.user
        ),
        None => format!("{} container {}", c.engine, c.name),
    };
    let port = b.map(|b| b.host_port).unwrap_or(packet.dport);
    let evidence = format!(
        "{who}: {}, network mode {}, networks {}, publishes {}",
        c.state,
        c.network_mode,
        if c.attachments.is_empty() {
            "none".to_string()
        } else {
            c.attachments
                .iter()
                .map(|a| {
                    let addrs: Vec<String> = a
                        .ipv4
                        .map(|x| x.to_string())
                        .into_iter()
                        .chain(a.ipv6.map(|x| x.to_string()))
                        .collect();
                    if addrs.is_empty() {
                        format!("{} (no address)", a.network)
                    } else {
                        format!("{} ({})", a.network, addrs.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
        listing(b, other, packet.dst.is_ipv6())
    );
    // `args`: the engine command's arguments, as the fix runs them.
    let not_running = |args: &[&str], what: &str| {
        Hop::fail(
            ID,
            TITLE,
            Fault::ContainerNotRunning,
            format!(
                "{who} is {}: nothing serves its port {port}; `{} {}` {what}{}",
                c.state,
                c.engine.cli(),
                args.iter()
                    .map(|a| crate::program::shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
                match &c.rootless {
                    Some(o) => format!(" (run as {})", o.user),
                    None => String::new(),
                }
            ),
        )
        .with_evidence(evidence.clone())
    };
    if c.engine == EngineKind::Cni {
        if let Some(h) = super::cni::cni_hop(snap, c, port, &who, fixer) {
            return h.with_evidence(evidence);
        }
    }
    match &c.state {
        ContainerState::Running | ContainerState::Restarting => {}
        ContainerState::Paused => {
            return not_running(&["unpause", &c.name], "thaws it").with_fix(Some(cli_fix(
                fixer,
                c,
                &format!("unpause {}", c.name),
                &["unpause", &c.name],
            )))
        }
        ContainerState::Dead => {
            return not_running(
                &["rm", &c.name],
                "then create it again: a dead container cannot start",
            )
        }
        _ => {
            // A pod's infra container is started with its pod (its members with it). A created
            // container never ran: "again" would tell the user it had stopped.
            let never_ran = c.state == ContainerState::Created;
            let (summary, verb, what): (String, Vec<&str>, &str) = match (&c.pod, c.infra) {
                (Some(pod), true) => (
                    format!("start the pod {pod}"),
                    vec!["pod", "start", pod],
                    if never_ran {
                        "starts the pod for the first time"
                    } else {
                        "starts the pod again"
                    },
                ),
                _ => (
                    format!("start {}", c.name),
                    vec!["start", &c.name],
                    if never_ran {
                        "starts it for the first time"
                    } else {
                        "starts it again"
                    },
                ),
            };
            return not_running(&verb, what).with_fix(Some(cli_fix(fixer, c, &summary, &verb)));
        }
    }
    // slirp4netns and pasta (rootless Podman) are networks of their own with no attachment.
    if c.network_mode != "host"
        && !c.network_mode.starts_with("container:")
        && !matches!(c.network_mode.as_str(), "slirp4netns" | "pasta")
        && c.attachments.is_empty()
    {
        let (net, was, to) = left_network(c);
        return Hop::fail(
            ID,
            TITLE,
            Fault::NotOnNetwork,
            format!(
                "{who} is running but on no network: its published port {port} has nowhere to go ({was})"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cli_fix(fixer, c, &to, &["network", "connect", &net, &c.name])));
    }
    if let Some(ip) = b.and_then(|b| b.host_ip).filter(|ip| !ip.is_unspecified()) {
        if ip != packet.dst && !(ip.is_loopback() && packet.dst.is_loopback()) {
            return published_elsewhere(c, b, ip, packet, fixer, exe).with_evidence(evidence);
        }
    }
    if let Some(h) = pod_member_down(snap, c, b, packet.proto, fixer) {
        return h.with_evidence(evidence);
    }
    Hop::ok(
        ID,
        TITLE,
        format!(
            "{who} is running and publishes {}",
            listing(b, other, packet.dst.is_ipv6())
        ),
    )
    .with_evidence(evidence)
}

/// A Podman pod publishes its ports on its infra container, which holds the namespace while
/// the member that serves the port has stopped: nothing listens there, and the engine's fix
/// starts the member (several stopped: `podman pod start`, which starts every stopped
/// container of the pod). Only when nothing listens on the container port: a member that
/// runs and does not listen is the service hop's finding. Or the member that listens is
/// paused: `podman unpause` it.
fn pod_member_down(
    snap: &Snapshot,
    c: &Container,
    b: Option<&PortBinding>,
    proto: Proto,
    fixer: &Fixer,
) -> Option<Hop> {
    let pod = c
        .pod
        .as_deref()
        .filter(|_| c.engine == EngineKind::Podman)?;
    let cport = b?.container_port;
    let ns = snap
        .namespaces
        .iter()
        .find(|n| c.netns_inode == Some(n.id.inode) || n.containers.iter().any(|r| r.id == c.id))?;
    let members: Vec<&Container> = snap
        .intent
        .as_ref()?
        .containers
        .iter()
        .filter(|m| m.engine == EngineKind::Podman && m.pod.as_deref() == Some(pod) && !m.infra)
        .collect();
    let listeners: Vec<_> = ns
        .listeners
        .iter()
        .filter(|s| s.proto == proto && s.is_listening() && s.local.port() == cport)
        .collect();
    if !listeners.is_empty() {
        // A paused member's socket still listens (the kernel completes the handshake) while
        // its process, frozen, never answers. Tied by the member's main pid owning it.
        let (m, owner) = members.iter().find_map(|m| {
            let pid = m.pid.filter(|_| m.state == ContainerState::Paused)?;
            let o = listeners
                .iter()
                .flat_map(|s| &s.owners)
                .find(|o| o.pid == pid)?;
            Some((m, o))
        })?;
        return Some(
            Hop::fail(
                ID,
                TITLE,
                Fault::ContainerNotRunning,
                format!(
                    "pod {pod} publishes port {} to container port {cport}, but its container {} is paused: {} (pid {}) listens on {proto}/{cport} frozen, so connections are accepted and never answered; `podman unpause {}` thaws it",
                    b?.host_port, m.name, owner.comm, owner.pid, m.name
                ),
            )
            .with_fix(Some(cli_fix(
                fixer,
                c,
                &format!("unpause {}", m.name),
                &["unpause", &m.name],
            ))),
        );
    }
    let stopped: Vec<&Container> = members.into_iter().filter(|m| !m.state.is_up()).collect();
    let (summary, verb): (String, Vec<&str>) = match stopped.as_slice() {
        [] => return None,
        [m] => (format!("start {}", m.name), vec!["start", &m.name]),
        _ => (
            format!("start the stopped containers of pod {pod}"),
            vec!["pod", "start", pod],
        ),
    };
    let (members, them) = match stopped.as_slice() {
        [m] => (format!("its container {} is {}", m.name, m.state), "it"),
        _ => (
            format!(
                "its containers {} are not running",
                stopped
                    .iter()
                    .map(|m| format!("{} ({})", m.name, m.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "them",
        ),
    };
    Some(
        Hop::fail(
            ID,
            TITLE,
            Fault::ContainerNotRunning,
            format!(
                "pod {pod} publishes port {} to container port {cport}, but {members}: nothing in the pod listens on {proto}/{cport} (its infra container {} holds the namespace); `podman {}` starts {them} again",
                b?.host_port,
                c.name,
                verb.join(" ")
            ),
        )
        .with_fix(Some(cli_fix(fixer, c, &summary, &verb))),
    )
}

/// The network a container on no network was on, how that is known, and the fix's words.
/// Whether that network still exists is not judged: the snapshot keeps only the networks
/// whose bridge is up here, and netavark removes a bridge with its last container.
fn left_network(c: &Container) -> (String, String, String) {
    // Docker's default network is "bridge" (network mode "default" means it too).
    let default = |c: &Container| {
        if c.engine == EngineKind::Podman {
            "podman"
        } else {
            "bridge"
        }
    };
    let again = |net: &str| {
        format!(
            "connect {} to {net} again (the engine re-publishes its ports)",
            c.name
        )
    };
    let net = match c.network_mode.as_str() {
        "default" | "bridge" | "" => default(c),
        other => other,
    };
    // Podman reports "bridge" for every netavark network and forgets the one a container
    // left: the networks its create command named are the record.
    if c.engine != EngineKind::Podman || net != "podman" {
        return (
            net.to_string(),
            format!("it was disconnected from {net}"),
            again(net),
        );
    }
    let Some(created) = &c.created_networks else {
        return (
            net.to_string(),
            "it was disconnected from its network; Podman keeps no record of which (`podman network ls` lists them)".to_string(),
            format!("connect {} to podman, Podman's default network (or to the network it was on)", c.name),
        );
    };
    let (net, how) = match created.first() {
        Some(first) => (
            first.clone(),
            format!("it was created with --network {}", created.join(",")),
        ),
        None => (
            net.to_string(),
            "it was created with no --network, so on Podman's default network podman".to_string(),
        ),
    };
    (
        net.clone(),
        format!("{how}; Podman forgets a network once disconnected from it, but keeps the create command"),
        again(&net),
    )
}

fn published_elsewhere(
    c: &Container,
    b: Option<&PortBinding>,
    ip: IpAddr,
    packet: &Packet,
    fixer: &Fixer,
    exe: &str,
) -> Hop {
    let port = packet.dport;
    let cport = b.map(|b| b.container_port).unwrap_or(port);
    let at = |a: IpAddr| match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    };
    // CNI has no -p: the runtime hands portmap its portMappings at the ADD.
    let line = if c.engine == EngineKind::Cni {
        format!(
            "CNI portmap's mapping for {} publishes {port} on {ip} only (hostIP {ip}, containerPort {cport}): a client reaching {} finds nothing there; to publish it on every address the runtime's portMappings should leave hostIP out (given at the CNI ADD)",
            c.name,
            at(packet.dst)
        )
    } else {
        format!(
            "{} publishes {port} on {ip} only (-p {}:{port}:{cport}): a client reaching {} finds nothing there; to publish it on every address re-create {} with -p {port}:{cport} (a container's ports cannot change while it exists)",
            c.name,
            ip,
            at(packet.dst),
            c.name
        )
    };
    let until = if c.engine == EngineKind::Cni {
        format!("until {}'s mappings are added without hostIP", c.name)
    } else {
        format!("until {} is re-created", c.name)
    };
    Hop::fail(ID, TITLE, Fault::PublishedElsewhere, line).with_fix(Some(fixer.fix_owned(
        &format!(
            "{until}, relay {} to {} on this host",
            at(packet.dst),
            at(ip)
        ),
        vec![exe.to_string(), "proxy".into(), at(packet.dst), at(ip)],
        true,
    )))
}

/// The engine's DNAT rule for a port it publishes to a running container, missing while
/// nothing else receives the port: the engine's own fix writes it again.
pub(crate) fn dnat_missing(
    snap: &Snapshot,
    c: &Container,
    b: &PortBinding,
    packet: &Packet,
    fixer: &Fixer,
) -> Option<Hop> {
    if c.state != ContainerState::Running {
        return None;
    }
    let (whose, fix) = match c.engine {
        EngineKind::Docker => (
            "Docker's".to_string(),
            // A rootless dockerd's container is restarted as its user, with its socket.
            Some(cli_fix(
                fixer,
                c,
                &format!(
                    "restart {}: Docker writes its port rules again when it starts",
                    c.name
                ),
                &["restart", &c.name],
            )),
        ),
        EngineKind::Podman => (
            "netavark's".to_string(),
            Some(fixer.fix(
                "have netavark write its rules again",
                &["podman", "network", "reload", "--all"],
            )),
        ),
        EngineKind::Cni => (
            "CNI portmap's".to_string(),
            super::cni::cni_portmap_readd(snap, c, fixer),
        ),
        _ => return None,
    };
    Some(
        Hop::fail(
            ID,
            "who receives it",
            Fault::DnatMissing,
            format!(
                "{whose} DNAT rule for {}/{} ({} container {}) is missing: nothing receives the port it publishes to {}",
                packet.proto,
                b.host_port,
                c.engine,
                c.name,
                published(Some(b), packet.dst.is_ipv6())
            ),
        )
        .with_fix(fix),
    )
}

#[cfg(test)]
mod tests {
    use crate::doctor::{replay, Fault};
    use crate::facts;

    fn load(name: &str) -> facts::Snapshot {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        facts::load(&p).unwrap()
    }

    #[test]
    fn a_podman_container_disconnected_from_a_custom_network_is_connected_to_that_one() {
        let mut snap = load("podman-disconnected-custom-network");
        let net = snap.intent.as_ref().unwrap().containers[0]
            .created_networks
            .clone()
            .and_then(|n| n.first().cloned())
            .expect("recorded from the create command");
        assert!(net.starts_with("nt-test-dnet-"), "{net}");
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fault, Some(Fault::NotOnNetwork));
        let fix = r.diagnosis.fix.unwrap();
        assert_eq!(fix.argv[2..5], ["podman", "network", "connect"]);
        assert_eq!(fix.argv[5], net);
        assert!(r
            .diagnosis
            .line
            .contains(&format!("created with --network {net}")));
        // Made through the Docker-compatible API (no create command): the default network,
        // said as a guess.
        for c in &mut snap.intent.as_mut().unwrap().containers {
            c.created_networks = None;
        }
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fix.unwrap().argv[5], "podman");
        assert!(r.diagnosis.line.contains("Podman keeps no record of which"));
    }
}
