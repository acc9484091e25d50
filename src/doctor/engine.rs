//! Intended vs actual in the engine's words: the container the engine publishes this port for,
//! whether it runs, whether it is on a network, and on which host address the port is
//! published. Each fault here is the cause; what follows from it is not a second fault.

use std::net::IpAddr;

use crate::engine::{Container, ContainerState, EngineKind, PortBinding};
use crate::facts::{Question, Snapshot};
use crate::netns::sockets::Proto;

use super::fix::Fixer;
use super::{Fault, Hop, Packet};

const ID: &str = "engine";
const TITLE: &str = "engine intent";

/// The engine's container for the question, and its binding for the port.
pub(crate) fn intended<'a>(
    snap: &'a Snapshot,
    q: &Question,
    proto: Proto,
    port: u16,
) -> Option<(&'a Container, Option<&'a PortBinding>)> {
    let intent = snap.intent.as_ref()?;
    let proto = proto.to_string();
    let binds = |c: &'a Container| {
        c.ports
            .iter()
            .filter(|b| b.proto == proto)
            .find(|b| port == 0 || b.host_port == port)
    };
    if let Some(name) = &q.container_name {
        let c = intent.container(name)?;
        let b = match q.port {
            Some(p) => c
                .ports
                .iter()
                .find(|b| b.proto == proto && b.container_port == p),
            None => binds(c),
        };
        return Some((c, b));
    }
    // Several containers may claim the port (an old one stopped, a new one running): the
    // running one is the one that counts.
    let mut claim: Vec<&Container> = intent
        .containers
        .iter()
        .filter(|c| c.engine != EngineKind::Lab && binds(c).is_some())
        .collect();
    claim.sort_by_key(|c| c.state != ContainerState::Running);
    let c = claim.first()?;
    Some((c, binds(c)))
}

fn cli_fix(fixer: &Fixer, c: &Container, summary: &str, verb: &[&str]) -> super::Fix {
    let mut argv = vec![c.engine.cli().to_string()];
    argv.extend(verb.iter().map(|s| s.to_string()));
    fixer.fix_owned(summary, argv, false)
}

fn published(b: Option<&PortBinding>) -> String {
    match b {
        Some(b) => format!(
            "{}:{}->{}/{}",
            b.host_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "0.0.0.0".into()),
            b.host_port,
            b.container_port,
            b.proto
        ),
        None => "no port".into(),
    }
}

/// The engine's view, judged: the first fault in it, or an ok hop that says what is intended.
pub(crate) fn intent_hop(
    c: &Container,
    b: Option<&PortBinding>,
    packet: &Packet,
    fixer: &Fixer,
    exe: &str,
) -> Hop {
    let who = format!("{} container {}", c.engine, c.name);
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
        published(b)
    );
    let not_running = |verb: &str, what: &str| {
        Hop::fail(
            ID,
            TITLE,
            Fault::ContainerNotRunning,
            format!(
                "{who} is {}: nothing serves its port {port}; `{} {verb} {}` {what}",
                c.state,
                c.engine.cli(),
                c.name
            ),
        )
        .with_evidence(evidence.clone())
    };
    match &c.state {
        ContainerState::Running | ContainerState::Restarting => {}
        ContainerState::Paused => {
            return not_running("unpause", "thaws it").with_fix(Some(cli_fix(
                fixer,
                c,
                &format!("unpause {}", c.name),
                &["unpause", &c.name],
            )))
        }
        ContainerState::Dead => {
            return not_running("rm", "then create it again: a dead container cannot start")
        }
        _ => {
            let (summary, verb): (String, Vec<&str>) = match (&c.pod, c.infra) {
                (Some(pod), true) => (format!("start the pod {pod}"), vec!["pod", "start", pod]),
                _ => (format!("start {}", c.name), vec!["start", &c.name]),
            };
            return not_running("start", "starts it again")
                .with_fix(Some(cli_fix(fixer, c, &summary, &verb)));
        }
    }
    if c.network_mode != "host"
        && !c.network_mode.starts_with("container:")
        && c.attachments.is_empty()
    {
        // Docker's default network is "bridge" (network mode "default" means it too).
        let net = match c.network_mode.as_str() {
            "default" | "bridge" | "" => {
                if c.engine == EngineKind::Podman {
                    "podman"
                } else {
                    "bridge"
                }
            }
            other => other,
        }
        .to_string();
        return Hop::fail(
            ID,
            TITLE,
            Fault::NotOnNetwork,
            format!(
                "{who} is running but on no network: its published port {port} has nowhere to go (it was disconnected from {net})"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cli_fix(
            fixer,
            c,
            &format!("connect {} to {net} again (the engine re-publishes its ports)", c.name),
            &["network", "connect", &net, &c.name],
        )));
    }
    if let Some(ip) = b.and_then(|b| b.host_ip).filter(|ip| !ip.is_unspecified()) {
        if ip != packet.dst && !(ip.is_loopback() && packet.dst.is_loopback()) {
            return published_elsewhere(c, b, ip, packet, fixer, exe).with_evidence(evidence);
        }
    }
    Hop::ok(
        ID,
        TITLE,
        format!("{who} is running and publishes {}", published(b)),
    )
    .with_evidence(evidence)
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
    Hop::fail(
        ID,
        TITLE,
        Fault::PublishedElsewhere,
        format!(
            "{} publishes {port} on {ip} only (-p {}:{port}:{cport}): a client reaching {} finds nothing there; to publish it on every address re-create {} with -p {port}:{cport} (a container's ports cannot change while it exists)",
            c.name,
            ip,
            at(packet.dst),
            c.name
        ),
    )
    .with_fix(Some(fixer.fix_owned(
        &format!(
            "until {} is re-created, relay {} to {} on this host",
            c.name,
            at(packet.dst),
            at(ip)
        ),
        vec![
            exe.to_string(),
            "proxy".into(),
            at(packet.dst),
            at(ip),
        ],
        true,
    )))
}
