//! The graph from a snapshot ([`collect`], pure: no root, unit-testable on captures) and the
//! live read that gathers what it needs ([`read`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::{
    CollectOptions, Edge, EdgeKind, Graph, InterfaceNode, Listener, NamespaceNode, Node,
    PublishedNode, Scope, TopologyError,
};
use crate::engine::Intent;
use crate::facts::links::{LinkMap, LinkRef};
use crate::facts::proxies::ProxyTarget;
use crate::facts::{self, Parts, ProxyProcess, ReadOptions, Snapshot};
use crate::nat::Ruleset;
use crate::netns::sockets::{Owner, Proto, Socket};
use crate::netns::{NetNs, NsId};

fn ns_id(inode: u64) -> String {
    format!("ns{inode}")
}

fn if_id(inode: u64, index: u32) -> String {
    format!("ns{inode}:if{index}")
}

fn owners_str(o: &[Owner]) -> Vec<String> {
    o.iter().map(|o| format!("{}/{}", o.pid, o.comm)).collect()
}

/// Read what [`collect`] needs for `scope`, once: every namespace's links, addresses, routes
/// and listeners with their owners, the proxies behind those listeners, the engines' intent,
/// and the firewall of each drawn namespace that holds a bridge (its published ports).
/// `host` is the scope's main namespace; `extra` the ones discovery may not see.
pub(crate) fn read(
    scope: &Scope,
    host: &NetNs,
    extra: &[NetNs],
    opts: CollectOptions,
) -> Result<Snapshot, TopologyError> {
    let intent = if opts.skip_docker {
        Intent::default()
    } else {
        Intent::read()
    };
    let mut snap = facts::read_with(
        &ReadOptions {
            host: host.clone(),
            extra: extra.to_vec(),
            skip_docker: opts.skip_docker,
            conntrack: false,
        },
        &Parts::TOPOLOGY,
        Some(intent),
    )?;
    if !opts.skip_nat {
        let map = LinkMap::new(&snap);
        let bridged: Vec<NsId> = drawn(&map, scope)?
            .keys()
            .map(|&i| &snap.namespaces[i])
            .filter(|n| n.links.iter().any(|l| l.kind == "bridge"))
            .map(|n| n.id)
            .collect();
        facts::add_firewalls(&mut snap, &bridged);
    }
    Ok(snap)
}

/// Which namespaces, and which of their interfaces, `scope` draws.
fn drawn(map: &LinkMap, scope: &Scope) -> Result<BTreeMap<usize, BTreeSet<u32>>, TopologyError> {
    let snap = map.snap;
    let all_links = |ns: usize| -> BTreeSet<u32> {
        snap.namespaces[ns]
            .links
            .iter()
            .filter(|l| l.kind != "loopback")
            .map(|l| l.index)
            .collect()
    };
    let mut drawn: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    match scope {
        Scope::Host => {
            for i in 0..snap.namespaces.len() {
                drawn.insert(i, all_links(i));
            }
        }
        Scope::Set { namespaces, .. } => {
            for (id, name) in namespaces {
                let i = map.ns_index(*id).ok_or_else(|| {
                    TopologyError::Missing(name.clone().unwrap_or_else(|| id.inode.to_string()))
                })?;
                drawn.insert(i, all_links(i));
            }
        }
        Scope::Around { ns, label } => {
            let me = map
                .ns_index(*ns)
                .ok_or_else(|| TopologyError::Missing(label.clone()))?;
            drawn.insert(me, all_links(me));
            // Neighbours: the far end of every cross-namespace link from or to `me`, and its bridge.
            for (n, nl) in snap.namespaces.iter().enumerate() {
                for l in &nl.links {
                    let r = LinkRef {
                        ns: n,
                        index: l.index,
                    };
                    let Some(t) = map.link_target(r) else {
                        continue;
                    };
                    let far = match (r.ns == me, t.ns == me) {
                        (true, false) => t,
                        (false, true) => r,
                        _ => continue,
                    };
                    let set = drawn.entry(far.ns).or_default();
                    set.insert(far.index);
                    if let Some(m) = map.master(far) {
                        set.insert(m.index);
                    }
                }
            }
        }
    }
    Ok(drawn)
}

/// A published port found before it is placed: where, what, and how it was found.
#[derive(Debug, Clone)]
struct Mapping {
    ns: usize,
    proto: String,
    host_ip: String,
    host_port: String,
    target_ip: Option<IpAddr>,
    target_port: Option<u16>,
    target: String,
    via: String,
}

/// The picture of `scope` in `snap`: a pure function of the snapshot.
pub(crate) fn collect(
    snap: &Snapshot,
    scope: &Scope,
    opts: CollectOptions,
) -> Result<Graph, TopologyError> {
    let scan = LinkMap::new(snap);
    let mut drawn = drawn(&scan, scope)?;
    let scope_label = match scope {
        Scope::Host => "host".to_string(),
        Scope::Set { label, .. } => label.clone(),
        Scope::Around { label, .. } => format!("netns {label} and its neighbours"),
    };
    // Listening sockets of every drawn namespace, with their owners.
    let socks: HashMap<usize, &Vec<Socket>> = drawn
        .keys()
        .map(|&i| (i, &snap.namespaces[i].listeners))
        .collect();

    let mut hidden = 0;
    if matches!(scope, Scope::Host) && !opts.include_empty {
        drawn.retain(|i, links| {
            let keep = !links.is_empty()
                || socks.get(i).map(|s| !s.is_empty()).unwrap_or(false)
                || snap.namespaces[*i].current;
            if !keep {
                hidden += 1;
            }
            keep
        });
    }

    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let inode = |i: usize| snap.namespaces[i].id.inode;

    // Published ports: from NAT rules and from userland proxies' listeners.
    let mut mappings: Vec<Mapping> = Vec::new();
    for (&i, s) in &socks {
        for sock in s.iter() {
            for o in &sock.owners {
                let Some(p) = snap.proxies.iter().find(|p| p.pid == o.pid) else {
                    continue;
                };
                let via = format!("userland proxy {}/{}", o.pid, o.comm);
                if let Some(m) = proxy_mapping(i, sock.proto, sock.local, p, via) {
                    mappings.push(m);
                }
            }
        }
    }
    if !opts.skip_nat {
        for &i in drawn.keys() {
            let n = &snap.namespaces[i];
            if !n.links.iter().any(|l| l.kind == "bridge") {
                continue;
            }
            if let Some(rs) = n.firewall(snap).and_then(|f| f.ruleset_all(&n.label).ok()) {
                mappings.extend(nat_mappings(i, &rs));
            }
        }
    }

    // Network names for bridges: from the lab, else from the Docker API.
    let mut networks: HashMap<(usize, String), String> = HashMap::new();
    if let Scope::Set {
        namespaces,
        networks: nets,
        ..
    } = scope
    {
        if let Some(first) = namespaces.first().and_then(|(id, _)| scan.ns_index(*id)) {
            for (bridge, net) in nets {
                networks.insert((first, bridge.clone()), net.clone());
            }
        }
    }
    // Else from the engines' intent (Docker, Podman's netavark bridges, CNI, labs).
    for &i in drawn.keys() {
        for l in snap.namespaces[i]
            .links
            .iter()
            .filter(|l| l.kind == "bridge")
        {
            if let Some(net) = snap
                .intent
                .as_ref()
                .and_then(|it| it.network_by_bridge(&l.name))
            {
                networks
                    .entry((i, l.name.clone()))
                    .or_insert(net.name.clone());
            }
        }
    }

    for (&i, links) in &drawn {
        let n = &snap.namespaces[i];
        let nsid = ns_id(n.id.inode);
        let summary = scan.ns_summary(i);
        let mut ns_listeners = Vec::new();
        let mut if_listeners: HashMap<u32, Vec<Listener>> = HashMap::new();
        for s in socks.get(&i).into_iter().flat_map(|v| v.iter()) {
            let listener = Listener {
                proto: s.proto,
                address: s.local,
                processes: owners_str(&s.owners),
            };
            let ip = s.local.ip();
            let holder = (!ip.is_unspecified() && !ip.is_loopback())
                .then(|| {
                    n.addresses
                        .iter()
                        .find(|a| a.address == ip)
                        .map(|a| a.index)
                })
                .flatten();
            match holder.filter(|h| links.contains(h)) {
                Some(h) => if_listeners.entry(h).or_default().push(listener),
                None => ns_listeners.push(listener),
            }
        }
        let name_of = |idx: u32| {
            n.links
                .iter()
                .find(|l| l.index == idx)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("if{idx}"))
        };
        let default_routes = n
            .routes
            .iter()
            .filter(|r| r.destination.is_none() && r.kind == "unicast")
            .map(|r| {
                let mut s = "default".to_string();
                if let Some(g) = r.gateway {
                    let _ = write!(s, " via {g}");
                }
                if let Some(o) = r.oif {
                    let _ = write!(s, " dev {}", name_of(o));
                }
                s
            })
            .collect();
        let mut containers: Vec<String> =
            summary.containers.iter().map(|c| c.short_name()).collect();
        // A lab names its containers itself (no container runtime behind them).
        if let Scope::Set { namespaces, .. } = scope {
            for (id, name) in namespaces {
                if let Some(name) = name.as_ref().filter(|_| *id == n.id) {
                    if !containers.contains(name) {
                        containers.push(name.clone());
                    }
                }
            }
        }
        nodes.push(Node::Namespace(NamespaceNode {
            id: nsid.clone(),
            label: summary.label.clone(),
            inode: summary.inode,
            names: summary.names.clone(),
            containers,
            pod: summary.containers.iter().find_map(|c| c.pod.clone()),
            processes: owners_str(&summary.processes),
            current: summary.current,
            default_routes,
            listeners: ns_listeners,
        }));
        for &idx in links {
            let r = LinkRef { ns: i, index: idx };
            let Some(l) = scan.link(r) else { continue };
            let addresses = scan
                .addresses(r)
                .iter()
                .filter(|a| !matches!(a.address, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
                .map(|a| format!("{}/{}", a.address, a.prefix_len))
                .collect();
            let me = if_id(inode(i), idx);
            let mut outside = None;
            if let Some(t) = scan.link_target(r) {
                let drawn_far = drawn
                    .get(&t.ns)
                    .map(|s| s.contains(&t.index))
                    .unwrap_or(false);
                let far = scan.link(t).map(|x| x.name.clone()).unwrap_or_default();
                if drawn_far {
                    if l.kind == "veth" {
                        // Each pair once, from the host side (as `peer --all` lists it).
                        if scan.host_side_first(r, t) {
                            edges.push(Edge {
                                from: me.clone(),
                                to: if_id(inode(t.ns), t.index),
                                kind: EdgeKind::Veth,
                                label: {
                                    let mut s =
                                        format!("{}@if{} ⇄ {}@if{}", l.name, t.index, far, idx);
                                    let far_mtu = scan.link(t).map(|x| x.mtu).unwrap_or(l.mtu);
                                    if far_mtu != l.mtu {
                                        let _ = write!(s, " (MTU {}≠{}!)", l.mtu, far_mtu);
                                    }
                                    s
                                },
                            });
                        }
                    } else {
                        edges.push(Edge {
                            from: me.clone(),
                            to: if_id(inode(t.ns), t.index),
                            kind: EdgeKind::Lower,
                            label: format!("{} on {}", l.kind, far),
                        });
                    }
                } else {
                    let what = if l.kind == "veth" { "peer" } else { "on" };
                    outside = Some(format!(
                        "{what} {far}@if{} in {}",
                        t.index,
                        scan.ns_summary(t.ns).label
                    ));
                }
            } else if l.kind == "veth" {
                outside = Some(format!("peer if{} not found", l.link.unwrap_or(0)));
            }
            if let Some(m) = scan.master(r) {
                if links.contains(&m.index) {
                    edges.push(Edge {
                        from: me.clone(),
                        to: if_id(inode(i), m.index),
                        kind: EdgeKind::BridgePort,
                        label: "port".into(),
                    });
                }
            }
            nodes.push(Node::Interface(InterfaceNode {
                id: me,
                namespace: nsid.clone(),
                name: l.name.clone(),
                index: idx,
                kind: l.kind.clone(),
                mtu: l.mtu,
                state: if l.admin_up {
                    l.oper_state.clone()
                } else {
                    "down".into()
                },
                addresses,
                listeners: if_listeners.remove(&idx).unwrap_or_default(),
                outside,
                network: networks.get(&(i, l.name.clone())).cloned(),
            }));
        }
    }

    // Place the published ports: the target is the drawn interface holding the target address,
    // preferring namespaces joined to the mapping's namespace by a link.
    let mut seen_pub: HashMap<String, usize> = HashMap::new();
    for m in mappings {
        if !drawn.contains_key(&m.ns) {
            continue;
        }
        let id = format!(
            "{}:pub:{}:{}:{}",
            ns_id(inode(m.ns)),
            m.proto,
            m.host_ip,
            m.host_port
        );
        let target_ref = m
            .target_ip
            .and_then(|ip| find_holder(&scan, &drawn, m.ns, ip));
        // Around a container, the host's ports that lead to other containers are noise.
        if let Scope::Around { ns: me, .. } = scope {
            if target_ref.is_none() && Some(m.ns) != scan.ns_index(*me) {
                continue;
            }
        }
        if let Some(&k) = seen_pub.get(&id) {
            // The same host port again: another way it was found, or another backend.
            if let Node::Published(p) = &mut nodes[k] {
                if !p.via.contains(&m.via) {
                    p.via.push(m.via);
                }
            }
            if let Some(t) = target_ref {
                let to = if_id(inode(t.ns), t.index);
                if !edges.iter().any(|e| e.from == id && e.to == to) {
                    edges.push(Edge {
                        from: id.clone(),
                        to,
                        kind: EdgeKind::Published,
                        label: format!("{} {} → {}", m.proto, m.host_port, m.target),
                    });
                }
            }
            continue;
        }
        let target_listening = target_ref.map(|t| {
            socks
                .get(&t.ns)
                .map(|s| {
                    s.iter().any(|s| {
                        s.proto.to_string() == m.proto
                            && Some(s.local.port()) == m.target_port
                            && (s.local.ip().is_unspecified() || Some(s.local.ip()) == m.target_ip)
                    })
                })
                .unwrap_or(false)
        });
        if let Some(t) = target_ref {
            edges.push(Edge {
                from: id.clone(),
                to: if_id(inode(t.ns), t.index),
                kind: EdgeKind::Published,
                label: format!("{} {} → {}", m.proto, m.host_port, m.target),
            });
        }
        seen_pub.insert(id.clone(), nodes.len());
        nodes.push(Node::Published(PublishedNode {
            id,
            namespace: ns_id(inode(m.ns)),
            proto: m.proto,
            host_ip: m.host_ip,
            host_port: m.host_port,
            target: m.target,
            target_listening,
            via: vec![m.via],
        }));
    }

    Ok(Graph {
        scope: scope_label,
        nodes,
        edges,
        hidden_empty_namespaces: hidden,
    })
}

/// The drawn interface holding `ip`: first in namespaces linked to `from`, then anywhere drawn.
fn find_holder(
    scan: &LinkMap,
    drawn: &BTreeMap<usize, BTreeSet<u32>>,
    from: usize,
    ip: IpAddr,
) -> Option<LinkRef> {
    let mut linked: HashSet<usize> = HashSet::new();
    for (n, nl) in scan.snap.namespaces.iter().enumerate() {
        for l in &nl.links {
            let r = LinkRef {
                ns: n,
                index: l.index,
            };
            if let Some(t) = scan.link_target(r) {
                if r.ns == from {
                    linked.insert(t.ns);
                }
                if t.ns == from {
                    linked.insert(r.ns);
                }
            }
        }
    }
    let holders: Vec<LinkRef> = drawn
        .iter()
        .flat_map(|(&ns, links)| {
            scan.snap.namespaces[ns]
                .addresses
                .iter()
                .filter(move |a| a.address == ip && links.contains(&a.index))
                .map(move |a| LinkRef { ns, index: a.index })
        })
        .collect();
    holders
        .iter()
        .find(|h| linked.contains(&h.ns) && h.ns != from)
        .or_else(|| holders.iter().find(|h| h.ns != from))
        .copied()
}

/// The mapping a recognised proxy serves at its listener (`proto`, `local`): the proxy's own
/// parsers read its command line in src/facts, never a copy of their flags here.
fn proxy_mapping(
    ns: usize,
    sock_proto: Proto,
    local: SocketAddr,
    proxy: &ProxyProcess,
    via: String,
) -> Option<Mapping> {
    let port = local.port();
    let map = proxy.map_for(sock_proto, local)?;
    let target_port = map.target_port_for(port)?;
    let (target_ip, target) = match &map.target {
        ProxyTarget::Address { target_ip } => (
            Some(*target_ip),
            SocketAddr::new(*target_ip, target_port).to_string(),
        ),
        // Still the proxy's port: drawn with its name and why it leads nowhere known here.
        ProxyTarget::Unresolved {
            target_name,
            unresolved,
            ..
        } => (
            None,
            format!("{target_name}:{target_port} (does not resolve where it runs: {unresolved})"),
        ),
    };
    Some(Mapping {
        ns,
        proto: sock_proto.to_string(),
        host_ip: local.ip().to_string(),
        host_port: port.to_string(),
        target_ip,
        target_port: Some(target_port),
        target,
        via,
    })
}

/// The mapping a proxy's argv describes (docker-proxy's flags by any binary name, `nettool
/// proxy` maps and ranges, socat's LISTEN form).
#[cfg(test)]
fn mapping_from_argv(
    ns: usize,
    sock_proto: Proto,
    local: SocketAddr,
    argv: &[String],
    via: String,
) -> Option<Mapping> {
    let proxy = crate::facts::proxies::recognise(0, "", argv)?;
    proxy_mapping(ns, sock_proto, local, &proxy, via)
}

/// Published ports from the NAT rules of one namespace, as the NAT explainer reads them.
fn nat_mappings(ns: usize, rules: &Ruleset) -> Vec<Mapping> {
    let summary = crate::nat::explain::summarize(rules);
    let mut out = Vec::new();
    for p in &summary.published {
        // Typed values from the explainer, never its words parsed back.
        let host_ip = match p.host_addr {
            Some(a) => a.to_string(),
            None => "0.0.0.0".to_string(),
        };
        for t in p.targets.iter().filter(|t| !t.shadowed) {
            out.push(Mapping {
                ns,
                proto: p.proto.clone(),
                host_ip: host_ip.clone(),
                host_port: p.host_port.clone(),
                target_ip: t.addr,
                target_port: t.port,
                target: t.to.clone(),
                via: format!("{} {}:{}", t.table, t.chain, t.line),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn proxy_argv() {
        let l: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8081 -container-ip 172.17.0.2 -container-port 80"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "172.17.0.2:80");
        assert_eq!(m.target_port, Some(80));
        // Another docker-proxy's port is not this one.
        assert!(mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("docker-proxy -host-port 9999 -container-ip 1.2.3.4 -container-port 80"),
            "x".into()
        )
        .is_none());
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("nettool proxy --log-file /tmp/x -p tcp:8000-8100=10.0.0.2:9000-9100 --dump"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "10.0.0.2:9081");
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("nettool proxy --listen-netns lab-host 8081 [fd00::2]:80"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "[fd00::2]:80");
        assert_eq!(m.target_ip, Some("fd00::2".parse().unwrap()));
        assert!(mapping_from_argv(0, Proto::Tcp, l, &argv("socat a b"), "x".into()).is_none());
        // What `nettool setup` starts: one proxy, a --map per published port.
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("/usr/bin/nettool proxy --map tcp:0.0.0.0:8080=172.19.0.2:80 --map tcp:0.0.0.0:8081=172.19.0.3:80 --log-file /run/nettool/x/proxy.log --ready-fd 3"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "172.19.0.3:80");
        // dockerd --userland-proxy-path pointing at nettool itself: docker-proxy's flags.
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("/usr/local/bin/nettool -proto tcp -host-ip 0.0.0.0 -host-port 8081 -container-ip 172.17.0.3 -container-port 80"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "172.17.0.3:80");
        // Flags after the positionals, and a range whose end would pass 65535, are the proxy's
        // own business: what it accepts is what is drawn, nothing overflows.
        let m = mapping_from_argv(
            0,
            Proto::Tcp,
            l,
            &argv("nettool proxy 8081 10.0.0.9:80 --pcap-max-mb 5 --pcap /tmp/p.pcap"),
            "x".into(),
        )
        .unwrap();
        assert_eq!(m.target, "10.0.0.9:80");
        let hi: SocketAddr = "0.0.0.0:65535".parse().unwrap();
        assert!(mapping_from_argv(
            0,
            Proto::Tcp,
            hi,
            &argv("nettool proxy -p tcp:65000-65535=10.0.0.2:65500-66035"),
            "x".into()
        )
        .is_none());
    }
}
