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
        .flat_map(|a| {
            a.ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(a.ipv6.map(IpAddr::V6))
        })
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

fn cli_fix(fixer: &Fixer, c: &Container, summary: &str, verb: &[&str]) -> super::Fix {
    let mut argv = vec![c.engine.cli().to_string()];
    argv.extend(verb.iter().map(|s| s.to_string()));
    fixer.fix_owned(summary, argv, false)
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
        listing(b, other, packet.dst.is_ipv6())
    );
    // `args`: the engine command's arguments, as the fix runs them.
    let not_running = |args: &[&str], what: &str| {
        Hop::fail(
            ID,
            TITLE,
            Fault::ContainerNotRunning,
            format!(
                "{who} is {}: nothing serves its port {port}; `{} {}` {what}",
                c.state,
                c.engine.cli(),
                args.join(" ")
            ),
        )
        .with_evidence(evidence.clone())
    };
    if c.engine == EngineKind::Cni {
        if let Some(h) = cni_hop(snap, c, port, &who, fixer) {
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
            // A pod's infra container is started with its pod (its members with it).
            let (summary, verb, what): (String, Vec<&str>, &str) = match (&c.pod, c.infra) {
                (Some(pod), true) => (
                    format!("start the pod {pod}"),
                    vec!["pod", "start", pod],
                    "starts the pod again",
                ),
                _ => (
                    format!("start {}", c.name),
                    vec!["start", &c.name],
                    "starts it again",
                ),
            };
            return not_running(&verb, what).with_fix(Some(cli_fix(fixer, c, &summary, &verb)));
        }
    }
    if c.network_mode != "host"
        && !c.network_mode.starts_with("container:")
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
    if let Some(h) = pod_member_stopped(snap, c, b, packet.proto, fixer) {
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
/// runs and does not listen is the service hop's finding.
fn pod_member_stopped(
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
    if ns
        .listeners
        .iter()
        .any(|s| s.proto == proto && s.is_listening() && s.local.port() == cport)
    {
        return None;
    }
    let stopped: Vec<&Container> = snap
        .intent
        .as_ref()?
        .containers
        .iter()
        .filter(|m| {
            m.engine == EngineKind::Podman
                && m.pod.as_deref() == Some(pod)
                && !m.infra
                && !m.state.is_up()
        })
        .collect();
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
    Hop::fail(ID, TITLE, Fault::PublishedElsewhere, line).with_fix(Some(fixer.fix_owned(
        &format!(
            "until {} is re-created, relay {} to {} on this host",
            c.name,
            at(packet.dst),
            at(ip)
        ),
        vec![exe.to_string(), "proxy".into(), at(packet.dst), at(ip)],
        true,
    )))
}

/// CNI has no daemon to ask: its cache says what was attached, the namespaces say what is
/// left. A namespace gone (the runtime removed the sandbox without a CNI DEL) or the
/// container's interface gone from it (its veth deleted) leaves the port's rules pointing at
/// an address nobody holds. The runtime (containerd, CRI-O, kubelet) owns the namespace: the
/// fix is the chain's DEL from the cache, then (`then`) the ADD into the new namespace it makes.
fn cni_hop(snap: &Snapshot, c: &Container, port: u16, who: &str, fixer: &Fixer) -> Option<Hop> {
    let addrs: Vec<IpAddr> = c
        .attachments
        .iter()
        .flat_map(|a| {
            a.ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(a.ipv6.map(IpAddr::V6))
        })
        .collect();
    let list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let netns = c
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    if c.state != ContainerState::Running {
        let what = match c.netns.as_ref().map(|p| p.exists()) {
            Some(true) => "a file that opens no namespace",
            _ => "missing",
        };
        return Some(
            Hop::fail(
                ID,
                TITLE,
                Fault::ContainerNotRunning,
                format!(
                    "{who}'s network namespace is gone ({netns}: {what}): the runtime that made the container owns its namespace and removed it without a CNI DEL, so nothing serves its port {port} and its port rules and address {list} are left over; the chain's DEL from libcni's cache clears them, then the runtime's ADD into a new namespace brings it back"
                ),
            )
            .with_fix(cni_namespace_gone_fix(snap, c, fixer)),
        );
    }
    let ns = snap
        .namespaces
        .iter()
        .find(|n| n.containers.iter().any(|r| r.id == c.id))?;
    if addrs.is_empty() || addrs.iter().any(|a| ns.has_address(*a)) {
        return None;
    }
    let networks = c
        .attachments
        .iter()
        .map(|a| a.network.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Some(
        Hop::fail(
            ID,
            TITLE,
            Fault::NotOnNetwork,
            format!(
                "{who} no longer holds {list} in its namespace {netns} (its interface on {networks} was removed): its port {port} is sent to an address nobody holds; attach it again with the network's CNI chain (DEL, then ADD keeping {list})"
            ),
        )
        .with_evidence(format!("{}: addresses {}", ns.label, ns.address_list()))
        .with_fix(cni_chain_readd(snap, c, fixer)),
    )
}

/// The container's port mappings as libcni hands them to portmap (runtimeConfig).
fn cni_mappings(c: &Container) -> Vec<serde_json::Value> {
    c.ports
        .iter()
        .map(|b| {
            let mut m = serde_json::json!({
                "hostPort": b.host_port,
                "containerPort": b.container_port,
                "protocol": b.proto,
            });
            if let Some(ip) = b.host_ip {
                m["hostIP"] = serde_json::Value::String(ip.to_string());
            }
            m
        })
        .collect()
}

/// The attachment's addresses and the result's `ips` for them (prefix from the network's
/// subnets).
fn cni_ips(
    att: &crate::engine::Attachment,
    net: &crate::engine::Network,
) -> (Vec<IpAddr>, Vec<serde_json::Value>) {
    let addrs: Vec<IpAddr> = att
        .ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(att.ipv6.map(IpAddr::V6))
        .collect();
    let ips = addrs
        .iter()
        .map(|a| {
            let prefix = net
                .subnets
                .iter()
                .find(|s| s.contains(a))
                .map(|s| s.prefix_len())
                .unwrap_or(if a.is_ipv4() { 32 } else { 128 });
            serde_json::json!({"address": format!("{a}/{prefix}"), "interface": 0})
        })
        .collect();
    (addrs, ips)
}

/// Attach a CNI container again as libcni would: the network's cached chain, DEL in reverse
/// order (each plugin drops what is left of the attachment: the address reservation, port
/// and firewall rules), then ADD in order, each plugin given the previous one's result; the
/// IPAM plugin is asked for the container's cached addresses (`args.cni.ips`), so the cached
/// result (and every rule naming the address) stays true. One `sh -c` line: the configs are
/// its arguments.
pub(crate) fn cni_chain_readd(snap: &Snapshot, c: &Container, fixer: &Fixer) -> Option<super::Fix> {
    let chain = CniChain::of(snap, c)?;
    let mut script = String::from("set -e; ");
    script.push_str(&chain.prelude("\"$2\""));
    chain.push_del(&mut script, 0);
    chain.push_add(&mut script, 0);
    let argv = chain.argv(script, "cni-chain-add", &[]);
    Some(fixer.fix_owned(
        &format!(
            "attach CNI container {} to {} again (the chain {}: DEL, then ADD with its cached config and addresses)",
            c.name,
            chain.network,
            chain.kinds.join(" + ")
        ),
        argv,
        false,
    ))
}

/// A CNI container whose namespace is gone: the chain's DEL as libcni runs it from its cache
/// (the port and firewall rules, the address reservation and the cache entry go), run against
/// a scratch namespace holding the cached interface (a veth: the dummy driver may be absent)
/// and addresses, because the bridge plugin
/// finds the masquerade rule to remove from the addresses on the interface it deletes (with
/// the real, missing namespace it returns early and leaves it). Then, once the runtime has
/// made the new namespace at the cached path, the chain's ADD into it with the same
/// addresses, writing libcni's cache entry again.
fn cni_namespace_gone_fix(snap: &Snapshot, c: &Container, fixer: &Fixer) -> Option<super::Fix> {
    let chain = CniChain::of(snap, c)?;
    let cache = format!(
        "{}/{}-{}-{}",
        crate::engine::cni::RESULTS_DIR,
        chain.network,
        c.id,
        chain.ifname
    );
    // $5 the cache file, $6 the cached addresses (CIDR, space-separated).
    let cidrs = chain
        .ips
        .iter()
        .filter_map(|i| i.get("address")?.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut del = String::from(
        "set -e; s=nettool-cni-del-$$; ip netns add \"$s\"; trap 'ip netns del \"$s\"' EXIT; ip -n \"$s\" link add \"$3\" type veth peer name nettool-del0; for a in $6; do ip -n \"$s\" addr add \"$a\" dev \"$3\"; done; ",
    );
    del.push_str(&chain.prelude("/run/netns/$s"));
    // The firewall plugin removes its rules by address: when a live namespace holds the
    // address now (host-local gave it to another container), they are that container's.
    // Everything else is found by this container's id (portmap's chain, bridge's masquerade
    // rule, host-local's reservation).
    let reused = chain
        .addrs
        .iter()
        .any(|a| snap.namespaces.iter().any(|n| n.has_address(*a)));
    let skip: &[&str] = if reused { &["firewall"] } else { &[] };
    chain.push_del_skipping(&mut del, 2, skip);
    // libcni's DEL removes the cache entry; an empty file left where the namespace was
    // mounted would stop the runtime (or `ip netns add`) making the new one there (rm cannot
    // remove a live mount: it fails, and that is ignored).
    del.push_str("; rm -f \"$5\"; if [ -f \"$2\" ] && [ ! -s \"$2\" ]; then rm -f \"$2\" 2>/dev/null || true; fi");
    let del_argv = chain.argv(del, "cni-chain-del", &[cache.clone(), cidrs]);

    let config = crate::engine::cni::base64_encode(chain.list.as_bytes());
    let head = serde_json::json!({
        "kind": "cniCacheV1",
        "containerId": c.id,
        "config": config,
        "ifName": chain.ifname,
        "networkName": chain.network,
        "capabilityArgs": {"portMappings": cni_mappings(c)},
    })
    .to_string();
    // The entry without its closing brace: the script appends the chain's result.
    let head = format!("{},", head.strip_suffix('}').unwrap_or(&head));
    let mut add = String::from("set -e; ");
    add.push_str(&chain.prelude("\"$2\""));
    chain.push_add(&mut add, 2);
    add.push_str("; mkdir -p \"${5%/*}\"; printf '%s\"result\":%s}' \"$6\" \"$r\" > \"$5\"");
    let add_argv = chain.argv(add, "cni-chain-add", &[cache, head]);
    let by_hand = chain
        .netns
        .strip_prefix("/run/netns/")
        .or_else(|| chain.netns.strip_prefix("/var/run/netns/"))
        .filter(|n| !n.contains('/'))
        .map(|n| format!(" (made by hand: ip netns add {n})"))
        .unwrap_or_default();
    let mut fix = fixer.fix_owned(
        &format!(
            "DEL CNI container {} from {} as libcni does (the chain {} from the cached config): its port and firewall rules, masquerade rule, address reservation and cache entry go",
            c.name,
            chain.network,
            chain.kinds.join(" + ")
        ),
        del_argv,
        false,
    );
    fix.then = Some(Box::new(fixer.fix_owned(
        &format!(
            "once the runtime has made the container's new namespace at {}{by_hand}: the chain's ADD into it, keeping {}",
            chain.netns,
            chain
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        add_argv,
        false,
    )));
    Some(fix)
}

/// A CNI container's chain as libcni would run it: each plugin's config (name and version
/// from the list, runtimeConfig for portmap, the cached addresses for IPAM), the cached
/// result to DEL with, and the arguments a `sh -c` script gets.
struct CniChain {
    network: String,
    /// The network's list, as the cache holds it (for a cache entry written again).
    list: String,
    netns: String,
    ifname: String,
    addrs: Vec<IpAddr>,
    ips: Vec<serde_json::Value>,
    /// The cached result (prevResult of the DEL).
    result: String,
    kinds: Vec<String>,
    confs: Vec<String>,
    id: String,
}

impl CniChain {
    fn of(snap: &Snapshot, c: &Container) -> Option<CniChain> {
        use serde_json::{json, Value};
        let intent = snap.intent.as_ref()?;
        let (att, net) = c.attachments.iter().find_map(|a| {
            let n = intent.networks.iter().find(|n| {
                n.engine == EngineKind::Cni && n.name == a.network && n.cni_chain.is_some()
            })?;
            Some((a, n))
        })?;
        let list = net.cni_chain.clone()?;
        let chain: Value = serde_json::from_str(&list).ok()?;
        let plugins = chain.get("plugins")?.as_array()?;
        let netns = c.netns.as_ref()?.display().to_string();
        // The interface the chain was run with (libcni's ifName): a second network is net1.
        let ifname = att.ifname.clone().unwrap_or_else(|| "eth0".into());
        let (addrs, ips) = cni_ips(att, net);
        let version = chain
            .get("cniVersion")
            .cloned()
            .unwrap_or(Value::String("1.0.0".into()));
        let mut confs = Vec::new();
        let mut kinds = Vec::new();
        for p in plugins {
            let kind = p.get("type")?.as_str()?;
            // The plugin's name is a word on the command line: a path or an option is refused.
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                || kind.starts_with('.')
            {
                return None;
            }
            let mut conf = p.clone();
            conf["name"] = chain.get("name")?.clone();
            conf["cniVersion"] = version.clone();
            if p.pointer("/capabilities/portMappings") == Some(&Value::Bool(true)) {
                conf["runtimeConfig"] = json!({ "portMappings": cni_mappings(c) });
            }
            if p.get("ipam").is_some() {
                conf["args"] = json!({"cni": {"ips": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()}});
            }
            kinds.push(kind.to_string());
            confs.push(conf.to_string());
        }
        let result = json!({
            "cniVersion": version,
            "interfaces": [{"name": ifname, "sandbox": netns}],
            "ips": ips,
        })
        .to_string();
        Some(CniChain {
            network: net.name.clone(),
            list,
            netns,
            ifname,
            addrs,
            ips,
            result,
            kinds,
            confs,
            id: c.id.clone(),
        })
    }

    /// The script's start: PATH and the CNI variables ($1 id, $3 ifname; the namespace as
    /// given), and `p`, which puts a result into a config as its prevResult.
    fn prelude(&self, netns: &str) -> String {
        format!(
            "PATH=/opt/cni/bin:/usr/lib/cni:$PATH; export CNI_CONTAINERID=\"$1\" CNI_NETNS={netns} CNI_IFNAME=\"$3\" CNI_PATH=/opt/cni/bin:/usr/lib/cni; p() {{ printf '{{\"prevResult\":%s,%s' \"$1\" \"${{2#?}}\"; }}"
        )
    }

    /// The configs follow the fixed arguments and `extra`: "${N}" for plugin `i`.
    fn arg(&self, i: usize, extra: usize) -> String {
        format!("\"${{{}}}\"", i + 5 + extra)
    }

    /// DEL in reverse order, each plugin given the cached result ($4).
    fn push_del(&self, script: &mut String, extra: usize) {
        self.push_del_skipping(script, extra, &[]);
    }

    /// DEL as [`CniChain::push_del`], leaving out the plugins of the kinds in `skip`.
    fn push_del_skipping(&self, script: &mut String, extra: usize, skip: &[&str]) {
        for (i, k) in self.kinds.iter().enumerate().rev() {
            if skip.contains(&k.as_str()) {
                continue;
            }
            script.push_str(&format!(
                "; p \"$4\" {} | CNI_COMMAND=DEL {k} >/dev/null",
                self.arg(i, extra)
            ));
        }
    }

    /// ADD in order, each plugin given the previous one's result; the last in $r.
    fn push_add(&self, script: &mut String, extra: usize) {
        for (i, k) in self.kinds.iter().enumerate() {
            if i == 0 {
                script.push_str(&format!(
                    "; r=$(printf '%s' {} | CNI_COMMAND=ADD {k})",
                    self.arg(i, extra)
                ));
            } else {
                script.push_str(&format!(
                    "; r=$(p \"$r\" {} | CNI_COMMAND=ADD {k})",
                    self.arg(i, extra)
                ));
            }
        }
    }

    /// `sh -c SCRIPT NAME id netns ifname result EXTRA... CONFS...`.
    fn argv(&self, script: String, name: &str, extra: &[String]) -> Vec<String> {
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            script,
            name.into(),
            self.id.clone(),
            self.netns.clone(),
            self.ifname.clone(),
            self.result.clone(),
        ];
        argv.extend(extra.iter().cloned());
        argv.extend(self.confs.iter().cloned());
        argv
    }
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
            Some(fixer.fix(
                &format!(
                    "restart {}: Docker writes its port rules again when it starts",
                    c.name
                ),
                &["docker", "restart", &c.name],
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
            cni_portmap_readd(snap, c, fixer),
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

/// A CNI re-add of portmap for `c`, as libcni runs it: the network's portmap config from the
/// cache, the container's port mappings as runtimeConfig and its addresses as prevResult,
/// given on stdin to the portmap plugin with CNI_COMMAND=ADD in the host namespace. portmap
/// only adds the rules that are missing (its chain for the container is named from the
/// network and the container id, so it is the same chain).
fn cni_portmap_readd(snap: &Snapshot, c: &Container, fixer: &Fixer) -> Option<super::Fix> {
    use serde_json::{json, Value};
    let intent = snap.intent.as_ref()?;
    let (att, net) = c.attachments.iter().find_map(|a| {
        let n = intent
            .networks
            .iter()
            .find(|n| n.engine == EngineKind::Cni && n.name == a.network && n.portmap.is_some())?;
        Some((a, n))
    })?;
    let mut conf: Value = serde_json::from_str(net.portmap.as_deref()?).ok()?;
    let netns = c.netns.as_ref()?.display().to_string();
    let mappings = cni_mappings(c);
    // The container's interface: libcni's ifName, else the one holding its address in its
    // namespace, else eth0.
    let (addrs, ips) = cni_ips(att, net);
    let ifname = att.ifname.clone().unwrap_or_else(|| {
        snap.namespaces
            .iter()
            .find(|n| n.containers.iter().any(|r| r.id == c.id))
            .and_then(|n| {
                let a = n.addresses.iter().find(|x| addrs.contains(&x.address))?;
                n.link(a.index).map(|l| l.name.clone())
            })
            .unwrap_or_else(|| "eth0".into())
    });
    conf["runtimeConfig"] = json!({ "portMappings": mappings });
    conf["prevResult"] = json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::String("1.0.0".into())),
        "interfaces": [{"name": ifname, "sandbox": netns}],
        "ips": ips,
    });
    // The plugin is looked up where runtimes install plugins: /opt/cni/bin, then Debian's.
    let script = "PATH=/opt/cni/bin:/usr/lib/cni:$PATH; printf '%s' \"$1\" | CNI_COMMAND=ADD CNI_CONTAINERID=\"$2\" CNI_NETNS=\"$3\" CNI_IFNAME=\"$4\" CNI_PATH=/opt/cni/bin:/usr/lib/cni portmap >/dev/null";
    Some(fixer.fix_owned(
        &format!(
            "re-add the port mappings of CNI container {} on {} (the portmap plugin, ADD, with the cached config)",
            c.name, net.name
        ),
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "cni-portmap-add".into(),
            conf.to_string(),
            c.id.clone(),
            netns,
            ifname,
        ],
        false,
    ))
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

    #[test]
    fn a_cni_namespace_gone_is_deleted_from_the_cache_then_added_again() {
        let mut snap = load("cni-namespace-gone");
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fault, Some(Fault::ContainerNotRunning));
        let fix = r.diagnosis.fix.unwrap();
        let del = &fix.argv[2];
        for k in ["DEL firewall", "DEL portmap", "DEL bridge", "rm -f"] {
            assert!(del.contains(k), "{k}: {del}");
        }
        assert!(!del.contains("CNI_COMMAND=ADD"), "{del}");
        let then = fix
            .then
            .expect("the ADD once the runtime made the namespace");
        assert!(
            then.argv[2].contains("CNI_COMMAND=ADD bridge"),
            "{:?}",
            then.argv
        );
        assert!(then.summary.contains("ip netns add"), "{}", then.summary);
        // Its address now another container's (host-local handed it out again): the firewall
        // plugin, which removes rules by address, is left out of the DEL.
        let ip = snap.intent.as_ref().unwrap().containers[0].attachments[0]
            .ipv4
            .unwrap();
        let host = snap.host;
        let ns = snap.namespaces.iter_mut().find(|n| n.id != host).unwrap();
        ns.addresses.push(crate::netns::links::Address {
            index: 1,
            address: ip.into(),
            prefix_len: 24,
        });
        let r = replay(&snap).unwrap();
        let del = &r.diagnosis.fix.unwrap().argv[2];
        assert!(!del.contains("DEL firewall"), "{del}");
        assert!(
            del.contains("DEL portmap") && del.contains("DEL bridge"),
            "{del}"
        );
    }
}
