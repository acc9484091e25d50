//! The host's container networking as a graph: namespaces holding interfaces, veth pairs,
//! bridge ports, lower devices and published ports, with renderers to DOT, Mermaid and a text tree.
//!
//! Everything is read through the core ([`crate::netns`]): one [`HostScan`] for links,
//! sock_diag for listeners, the NAT rules for published ports. Renderers return strings.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::netns::peers::{HostScan, LinkRef, ScanOptions};
use crate::netns::sockets::{self, Owner, Proto, Socket, Which};
use crate::netns::{NetNs, NetnsError};

/// Errors collecting a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A namespace of the scope could not be found or read.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The namespace asked for was not found by the scan.
    #[error("namespace {0} was not found on the machine (did it just go away?)")]
    Missing(String),
}

/// What part of the machine to draw.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every namespace on the machine (empty ones, only `lo`, are left out unless asked).
    Host,
    /// One namespace in full, and the interfaces of its neighbours that connect to it.
    Around(NetNs),
    /// Exactly these namespaces, in full (a lab: its host namespace and its containers).
    Set {
        /// A name for the scope ("lab web").
        label: String,
        /// The namespaces, each with the container name it stands for, if any.
        namespaces: Vec<(NetNs, Option<String>)>,
        /// Bridge interface name -> the network it stands for (in the first namespace).
        networks: Vec<(String, String)>,
    },
}

/// Knobs for [`collect`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CollectOptions {
    /// Do not ask the Docker API for container names.
    pub skip_docker: bool,
    /// Keep namespaces that hold nothing but `lo` and no listener (whole-host scope).
    pub include_empty: bool,
    /// Do not read NAT rules (published ports come from proxies only).
    pub skip_nat: bool,
}

/// A listening socket as drawn.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    /// tcp or udp.
    pub proto: Proto,
    /// Local address and port.
    pub address: SocketAddr,
    /// Owning processes as pid/comm.
    pub processes: Vec<String>,
}

/// A namespace: a box holding interfaces.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceNode {
    /// Node id ("ns<inode>").
    pub id: String,
    /// Short name: a /run/netns name, container:NAME, pid:N, or "current".
    pub label: String,
    /// Inode.
    pub inode: u64,
    /// Names under /run/netns.
    pub names: Vec<String>,
    /// Container names (or short ids); a pod's members, then its infra.
    pub containers: Vec<String>,
    /// The Podman pod those containers form, if any.
    pub pod: Option<String>,
    /// Processes in it as pid/comm.
    pub processes: Vec<String>,
    /// True for the namespace nettool runs in.
    pub current: bool,
    /// Default routes ("default via 172.18.0.1 dev eth0").
    pub default_routes: Vec<String>,
    /// Listeners not tied to one interface (wildcard or loopback addresses).
    pub listeners: Vec<Listener>,
}

/// An interface inside a namespace.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceNode {
    /// Node id ("ns<inode>:if<index>").
    pub id: String,
    /// Id of the namespace node holding it.
    pub namespace: String,
    /// Interface name.
    pub name: String,
    /// ifindex.
    pub index: u32,
    /// veth, bridge, macvlan, vxlan, tun, device...
    pub kind: String,
    /// MTU.
    pub mtu: u32,
    /// Operational state ("down" when administratively down).
    pub state: String,
    /// Addresses as CIDR (IPv6 link-local left out).
    pub addresses: Vec<String>,
    /// Listeners bound to one of its addresses.
    pub listeners: Vec<Listener>,
    /// For a link whose other end is outside the drawing: where it goes, in words.
    pub outside: Option<String>,
    /// For a bridge: the container network it implements (lab or Docker network name).
    pub network: Option<String>,
}

/// A port published on a host address, and where it leads.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedNode {
    /// Node id ("ns<inode>:pub:<proto>:<host>:<port>").
    pub id: String,
    /// Id of the namespace node it is published in.
    pub namespace: String,
    /// tcp or udp.
    pub proto: String,
    /// Host address ("0.0.0.0", an address, or "any").
    pub host_ip: String,
    /// Host port or range.
    pub host_port: String,
    /// Target address:port.
    pub target: String,
    /// Whether something listens at the target (None when the target is outside the drawing).
    pub target_listening: Option<bool>,
    /// Where the mapping was found: "nat DOCKER:3", "userland proxy 1234/docker-proxy".
    pub via: Vec<String>,
}

/// A node of the graph.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Node {
    /// A network namespace.
    Namespace(NamespaceNode),
    /// An interface.
    Interface(InterfaceNode),
    /// A published port.
    Published(PublishedNode),
}

impl Node {
    /// The node's id.
    pub fn id(&self) -> &str {
        match self {
            Node::Namespace(n) => &n.id,
            Node::Interface(n) => &n.id,
            Node::Published(n) => &n.id,
        }
    }
}

/// What an edge stands for.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The two ends of a veth pair.
    Veth,
    /// An interface enslaved to a bridge (from the port to the bridge).
    BridgePort,
    /// A macvlan/ipvlan/vlan/vxlan on its lower device (from the upper to the lower).
    Lower,
    /// A published port to the interface holding its target address.
    Published,
}

/// An edge between two node ids.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// Source node id.
    pub from: String,
    /// Destination node id.
    pub to: String,
    /// What it is.
    pub kind: EdgeKind,
    /// The label drawn on it ("veth1@if2 ⇄ eth0@if5", "tcp 8080 → 172.18.0.2:80").
    pub label: String,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// What was drawn ("host", "netns web and neighbours", "lab demo").
    pub scope: String,
    /// Namespaces, interfaces, published ports.
    pub nodes: Vec<Node>,
    /// Veth pairs, bridge ports, lower devices, published ports.
    pub edges: Vec<Edge>,
    /// Namespaces left out because they hold nothing but lo.
    pub hidden_empty_namespaces: usize,
}

impl Graph {
    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id() == id)
    }

    fn namespaces(&self) -> impl Iterator<Item = &NamespaceNode> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Namespace(x) => Some(x),
            _ => None,
        })
    }

    fn interfaces_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a InterfaceNode> + 'a {
        self.nodes.iter().filter_map(move |n| match n {
            Node::Interface(x) if x.namespace == ns => Some(x),
            _ => None,
        })
    }

    fn published_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a PublishedNode> + 'a {
        self.nodes.iter().filter_map(move |n| match n {
            Node::Published(x) if x.namespace == ns => Some(x),
            _ => None,
        })
    }

    fn interface(&self, id: &str) -> Option<&InterfaceNode> {
        match self.node(id)? {
            Node::Interface(i) => Some(i),
            _ => None,
        }
    }
}

fn ns_id(inode: u64) -> String {
    format!("ns{inode}")
}

fn if_id(inode: u64, index: u32) -> String {
    format!("ns{inode}:if{index}")
}

fn owners_str(o: &[Owner]) -> Vec<String> {
    o.iter().map(|o| format!("{}/{}", o.pid, o.comm)).collect()
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

/// Read the picture for `scope`.
pub fn collect(scope: &Scope, opts: CollectOptions) -> Result<Graph, TopologyError> {
    let extra: Vec<NetNs> = match scope {
        Scope::Host => Vec::new(),
        Scope::Around(ns) => vec![ns.clone()],
        Scope::Set { namespaces, .. } => namespaces.iter().map(|(n, _)| n.clone()).collect(),
    };
    let scan = HostScan::scan(
        ScanOptions {
            skip_docker: opts.skip_docker,
        },
        &extra,
    );
    let all_links = |ns: usize| -> BTreeSet<u32> {
        scan.namespaces[ns]
            .links
            .iter()
            .filter(|l| l.kind != "loopback")
            .map(|l| l.index)
            .collect()
    };
    // Which namespaces, and which of their interfaces, are drawn.
    let mut drawn: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    let scope_label;
    match scope {
        Scope::Host => {
            scope_label = "host".to_string();
            for i in 0..scan.namespaces.len() {
                drawn.insert(i, all_links(i));
            }
        }
        Scope::Set {
            label, namespaces, ..
        } => {
            scope_label = label.clone();
            for (ns, _) in namespaces {
                let i = scan
                    .ns_index(ns.id())
                    .ok_or_else(|| TopologyError::Missing(ns.label().to_string()))?;
                drawn.insert(i, all_links(i));
            }
        }
        Scope::Around(ns) => {
            scope_label = format!("netns {} and its neighbours", ns.label());
            let me = scan
                .ns_index(ns.id())
                .ok_or_else(|| TopologyError::Missing(ns.label().to_string()))?;
            drawn.insert(me, all_links(me));
            // Neighbours: the far end of every cross-namespace link from or to `me`, and its bridge.
            for (n, nl) in scan.namespaces.iter().enumerate() {
                for l in &nl.links {
                    let r = LinkRef {
                        ns: n,
                        index: l.index,
                    };
                    let Some(t) = scan.link_target(r) else {
                        continue;
                    };
                    let far = match (r.ns == me, t.ns == me) {
                        (true, false) => t,
                        (false, true) => r,
                        _ => continue,
                    };
                    let set = drawn.entry(far.ns).or_default();
                    set.insert(far.index);
                    if let Some(m) = scan.master(far) {
                        set.insert(m.index);
                    }
                }
            }
        }
    }

    // Listening sockets of every drawn namespace, then one owner map for all of them.
    let mut socks: HashMap<usize, Vec<Socket>> = HashMap::new();
    for &i in drawn.keys() {
        if let Some(h) = scan.handle(i) {
            if let Ok(Ok(s)) = h.run(|| sockets::list_unowned(Which::Listening)) {
                socks.insert(i, s);
            }
        }
    }
    let owners = sockets::socket_owners();
    for s in socks.values_mut().flatten() {
        if let Some(o) = owners.get(&s.inode) {
            s.owners = o.clone();
        }
    }

    let mut hidden = 0;
    if matches!(scope, Scope::Host) && !opts.include_empty {
        drawn.retain(|i, links| {
            let keep = !links.is_empty()
                || socks.get(i).map(|s| !s.is_empty()).unwrap_or(false)
                || scan.namespaces[*i].info.current;
            if !keep {
                hidden += 1;
            }
            keep
        });
    }

    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let inode = |i: usize| scan.namespaces[i].info.id.inode;

    // Published ports: from NAT rules and from userland proxies' listeners.
    let mut mappings: Vec<Mapping> = Vec::new();
    for (&i, s) in &socks {
        for sock in s {
            for o in &sock.owners {
                if let Some(m) = proxy_mapping(i, sock, o) {
                    mappings.push(m);
                }
            }
        }
    }
    if !opts.skip_nat {
        for &i in drawn.keys() {
            let has_bridge = scan.namespaces[i].links.iter().any(|l| l.kind == "bridge");
            if !has_bridge {
                continue;
            }
            if let Some(h) = scan.handle(i) {
                mappings.extend(nat_mappings(i, h));
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
        if let Some(first) = namespaces
            .first()
            .and_then(|(ns, _)| scan.ns_index(ns.id()))
        {
            for (bridge, net) in nets {
                networks.insert((first, bridge.clone()), net.clone());
            }
        }
    }
    // Else from the engines' intent (Docker, Podman's netavark bridges, CNI, labs).
    for &i in drawn.keys() {
        for l in scan.namespaces[i]
            .links
            .iter()
            .filter(|l| l.kind == "bridge")
        {
            if let Some(net) = scan.intent.network_by_bridge(&l.name) {
                networks
                    .entry((i, l.name.clone()))
                    .or_insert(net.name.clone());
            }
        }
    }

    for (&i, links) in &drawn {
        let n = &scan.namespaces[i];
        let nsid = ns_id(n.info.id.inode);
        let summary = scan.ns_summary(i);
        let mut ns_listeners = Vec::new();
        let mut if_listeners: HashMap<u32, Vec<Listener>> = HashMap::new();
        for s in socks.get(&i).into_iter().flatten() {
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
            for (ns, name) in namespaces {
                if let Some(name) = name.as_ref().filter(|_| ns.id() == n.info.id) {
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
        if let Scope::Around(me) = scope {
            if target_ref.is_none() && Some(m.ns) != scan.ns_index(me.id()) {
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
    scan: &HostScan,
    drawn: &BTreeMap<usize, BTreeSet<u32>>,
    from: usize,
    ip: IpAddr,
) -> Option<LinkRef> {
    let mut linked: HashSet<usize> = HashSet::new();
    for (n, nl) in scan.namespaces.iter().enumerate() {
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
            scan.namespaces[ns]
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

/// A userland proxy's mapping from its command line: docker-proxy flags (also as
/// `nettool proxy -proto ...`) or `nettool proxy LISTEN TARGET`.
fn proxy_mapping(ns: usize, sock: &Socket, owner: &Owner) -> Option<Mapping> {
    let raw = std::fs::read(format!("/proc/{}/cmdline", owner.pid)).ok()?;
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let via = format!("userland proxy {}/{}", owner.pid, owner.comm);
    mapping_from_argv(ns, sock.proto, sock.local, &argv, via)
}

/// The mapping a proxy's argv describes for its listener at (`proto`, `local`), read with the
/// proxy's own parsers (docker-proxy's flags by any binary name, `nettool proxy` maps and
/// ranges, socat's LISTEN form) through the facts module, never a copy of their flags here.
fn mapping_from_argv(
    ns: usize,
    sock_proto: Proto,
    local: SocketAddr,
    argv: &[String],
    via: String,
) -> Option<Mapping> {
    let proxy = crate::facts::proxies::recognise(0, "", argv)?;
    let port = local.port();
    let map = proxy.maps.iter().find(|m| {
        m.proto == sock_proto
            && (m.listen_from..=m.listen_to).contains(&port)
            && m.listen_ip
                .is_none_or(|ip| ip == local.ip() || ip.is_unspecified())
    })?;
    let target = map.target_for(port)?;
    Some(Mapping {
        ns,
        proto: sock_proto.to_string(),
        host_ip: local.ip().to_string(),
        host_port: port.to_string(),
        target_ip: Some(target.ip()),
        target_port: Some(target.port()),
        target: target.to_string(),
        via,
    })
}

/// Published ports from the NAT rules of one namespace, as the NAT explainer reads them.
fn nat_mappings(ns: usize, handle: &NetNs) -> Vec<Mapping> {
    let Ok(rules) = crate::nat::load_live(handle) else {
        return Vec::new();
    };
    let summary = crate::nat::explain::summarize(&rules);
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

// ---------------------------------------------------------------------------------------------
// Renderers
// ---------------------------------------------------------------------------------------------

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn listener_str(l: &Listener) -> String {
    let who = l
        .processes
        .first()
        .map(|p| format!(" {}", p.split_once('/').map(|x| x.1).unwrap_or(p)))
        .unwrap_or_default();
    format!("{} {}{}", l.proto, l.address, who)
}

/// Short form for pictures: "tcp *:80 nettool".
fn listener_short(l: &Listener) -> String {
    let who = l
        .processes
        .first()
        .map(|p| format!(" {}", p.split_once('/').map(|x| x.1).unwrap_or(p)))
        .unwrap_or_default();
    if l.address.ip().is_unspecified() {
        format!("{} *:{}{}", l.proto, l.address.port(), who)
    } else {
        format!("{} {}{}", l.proto, l.address, who)
    }
}

/// Listeners of a namespace as pictures show them: wildcard ones go on its interfaces
/// (returned), loopback ones are folded into one title line.
fn picture_listeners(n: &NamespaceNode, has_interfaces: bool) -> (Vec<String>, Vec<&Listener>) {
    let mut title = Vec::new();
    let mut wildcard = Vec::new();
    let mut loopback: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for l in &n.listeners {
        let ip = l.address.ip();
        if ip.is_unspecified() && has_interfaces {
            wildcard.push(l);
        } else if ip.is_loopback() {
            loopback
                .entry(ip)
                .or_default()
                .push(format!("{} {}", l.proto, l.address.port()));
        } else {
            title.push(format!("● listen {}", listener_short(l)));
        }
    }
    for (ip, ports) in loopback {
        title.push(format!("● local {ip}: {}", ports.join(", ")));
    }
    (title, wildcard)
}

/// A container-like namespace: no bridge and at most two drawn interfaces, so its wildcard
/// listeners can be marked on each interface.
fn few_interfaces(g: &Graph, ns: &str) -> bool {
    let n = g.interfaces_in(ns).count();
    n > 0 && n <= 2 && !g.interfaces_in(ns).any(|i| i.kind == "bridge")
}

/// Title lines of a namespace; `picture` leaves listeners out (see [`picture_listeners`]).
fn ns_title_for(n: &NamespaceNode, picture: bool) -> Vec<String> {
    let mut lines = ns_title(n);
    if picture {
        lines.truncate(lines.len() - n.listeners.len());
    }
    lines
}

fn ns_title(n: &NamespaceNode) -> Vec<String> {
    let mut lines = Vec::new();
    let head = if let Some(pod) = &n.pod {
        format!("pod {pod}: container {}", n.containers.join(", "))
    } else if !n.containers.is_empty() {
        format!("container {}", n.containers.join(", "))
    } else {
        n.label.clone()
    };
    lines.push(head);
    let mut second = Vec::new();
    if !n.containers.is_empty() && n.label != format!("container:{}", n.containers[0]) {
        second.push(n.label.clone());
    }
    second.push(format!("netns {}", n.inode));
    lines.push(second.join(" · "));
    if n.containers.is_empty() && !n.processes.is_empty() {
        let mut p: Vec<String> = n.processes.iter().take(3).cloned().collect();
        if n.processes.len() > 3 {
            p.push(format!("+{}", n.processes.len() - 3));
        }
        lines.push(p.join(" "));
    }
    for r in &n.default_routes {
        lines.push(r.clone());
    }
    for l in &n.listeners {
        lines.push(format!("● listen {}", listener_str(l)));
    }
    lines
}

fn if_label(i: &InterfaceNode, wildcard: &[&Listener]) -> Vec<String> {
    let mut lines = vec![format!("{} ({})", i.name, i.kind)];
    if let Some(net) = &i.network {
        lines.push(format!("network \"{net}\""));
    }
    let mut meta = vec![format!("if{}", i.index)];
    if i.mtu != 1500 {
        meta.push(format!("mtu {}", i.mtu));
    }
    if i.state != "up" && i.state != "unknown" {
        meta.push(i.state.clone());
    }
    lines.push(meta.join(" · "));
    lines.extend(i.addresses.iter().cloned());
    for l in i.listeners.iter().chain(wildcard.iter().copied()) {
        lines.push(format!("● listen {}", listener_short(l)));
    }
    if let Some(o) = &i.outside {
        lines.push(format!("→ {o}"));
    }
    lines
}

/// How "host-like" a namespace node is, to draw edges from the host towards containers
/// (Graphviz ranks a directed layout along the edges).
fn hostness(g: &Graph, ns: &str) -> i64 {
    let Some(Node::Namespace(n)) = g.node(ns) else {
        return 0;
    };
    let mut score = g.interfaces_in(ns).count() as i64;
    score += 10 * g.interfaces_in(ns).filter(|i| i.kind == "bridge").count() as i64;
    score += 5 * g.published_in(ns).count() as i64;
    if n.current {
        score += 1000;
    }
    if !n.containers.is_empty() {
        score -= 100;
    }
    score
}

/// An edge as drawn: oriented from the host side, with a label naming both ends.
struct DrawnEdge<'a> {
    from: &'a str,
    to: &'a str,
    kind: EdgeKind,
    label: String,
}

fn drawn_edges(g: &Graph) -> Vec<DrawnEdge<'_>> {
    let ns_of = |id: &str| {
        g.interface(id)
            .map(|i| i.namespace.clone())
            .unwrap_or_default()
    };
    let bridge_ports: HashSet<&str> = g
        .edges
        .iter()
        .filter(|e| e.kind == EdgeKind::BridgePort)
        .map(|e| e.from.as_str())
        .collect();
    g.edges
        .iter()
        .map(|e| match e.kind {
            EdgeKind::Veth => {
                let (a, b) = (e.from.as_str(), e.to.as_str());
                let score = |x: &str| {
                    hostness(g, &ns_of(x)) + if bridge_ports.contains(x) { 10_000 } else { 0 }
                };
                let (from, to) = if score(b) > score(a) { (b, a) } else { (a, b) };
                let label = match (g.interface(from), g.interface(to)) {
                    (Some(f), Some(t)) => {
                        let mut s = format!("{}@if{} ⇄ {}@if{}", f.name, t.index, t.name, f.index);
                        if f.mtu != t.mtu {
                            let _ = write!(s, " (MTU {}≠{}!)", f.mtu, t.mtu);
                        }
                        s
                    }
                    _ => e.label.clone(),
                };
                DrawnEdge {
                    from,
                    to,
                    kind: e.kind,
                    label,
                }
            }
            // Bridge and lower device first, so they sit left of what hangs off them.
            EdgeKind::BridgePort | EdgeKind::Lower => DrawnEdge {
                from: &e.to,
                to: &e.from,
                kind: e.kind,
                label: e.label.clone(),
            },
            EdgeKind::Published => DrawnEdge {
                from: &e.from,
                to: &e.to,
                kind: e.kind,
                label: e.label.clone(),
            },
        })
        .collect()
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", dot_escape(s))
}

/// Graphviz DOT: namespaces as clusters, bridges as hubs, veth pairs as labelled edges,
/// published ports as green arrows (red when nothing listens at the target).
pub fn to_dot(g: &Graph) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph topology {{");
    let _ = writeln!(
        o,
        "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=13, nodesep=0.2, ranksep=1.0, newrank=true, labelloc=t, label=\"nettool topology: {}\"];",
        dot_escape(&g.scope)
    );
    let _ = writeln!(
        o,
        "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", color=\"#555555\", margin=\"0.12,0.04\"];"
    );
    let _ = writeln!(
        o,
        "  edge [fontname=\"Helvetica\", fontsize=9, arrowhead=none, color=\"#4a6fa5\"];"
    );
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for (k, n) in nss.iter().enumerate() {
        // Hosts (bridges, or nettool's own namespace) blue-grey; containers cream.
        let host = n.current || g.interfaces_in(&n.id).any(|i| i.kind == "bridge");
        let fill = if host { "#eef2f8" } else { "#f7f7ef" };
        // Containers put their title under their interfaces: edges come in from above-left
        // and would otherwise cross the text.
        let loc = if host { "t" } else { "b" };
        let _ = writeln!(o, "  subgraph cluster_{k} {{");
        let (extra, wildcard) = picture_listeners(n, few_interfaces(g, &n.id));
        let title: String = ns_title_for(n, true)
            .iter()
            .chain(extra.iter())
            .map(|l| dot_escape(l) + "\\l")
            .collect();
        let _ = writeln!(
            o,
            "    label=\"{title}\"; labeljust=l; labelloc={loc}; style=\"rounded,filled\"; fillcolor=\"{fill}\"; color=\"#8899aa\"; fontsize=11;"
        );
        let mut any = false;
        for i in g.interfaces_in(&n.id) {
            any = true;
            let (shape, fill) = match i.kind.as_str() {
                "bridge" => ("ellipse", "#ffe8a8"),
                "veth" => ("box", "#ffffff"),
                "macvlan" | "ipvlan" | "vlan" | "vxlan" | "macvtap" => ("box", "#e6f0ff"),
                "tun" | "tap" => ("box", "#f0e6ff"),
                _ => ("box", "#eeeeee"),
            };
            let pen = if i.listeners.is_empty() && wildcard.is_empty() {
                "1"
            } else {
                "2"
            };
            let label = if_label(i, &wildcard)
                .iter()
                .map(|l| dot_escape(l))
                .collect::<Vec<_>>()
                .join("\\n");
            let _ = writeln!(
                o,
                "    {} [label=\"{label}\", shape={shape}, fillcolor=\"{fill}\", penwidth={pen}];",
                dot_id(&i.id)
            );
        }
        for p in g.published_in(&n.id) {
            any = true;
            let _ = writeln!(
                o,
                "    {} [label=\"{} {}:{}\", shape=cds, fillcolor=\"#d7f0d2\", color=\"#2e7d32\"];",
                dot_id(&p.id),
                p.proto,
                dot_escape(&p.host_ip),
                p.host_port
            );
        }
        if !any {
            // Graphviz does not draw an empty cluster: give it an invisible anchor.
            let _ = writeln!(
                o,
                "    \"{}:empty\" [label=\"\", shape=point, style=invis];",
                dot_escape(&n.id)
            );
        }
        let _ = writeln!(o, "  }}");
    }
    for e in drawn_edges(g) {
        let attrs = match e.kind {
            EdgeKind::Veth => format!(
                "label=\"{}\", penwidth=1.4, headport=w, tailport=e",
                dot_escape(&e.label)
            ),
            EdgeKind::BridgePort => "style=dashed, color=\"#999999\"".to_string(),
            EdgeKind::Lower => format!(
                "label=\"{}\", style=dotted, color=\"#6a4aa5\", fontcolor=\"#6a4aa5\"",
                dot_escape(&e.label)
            ),
            EdgeKind::Published => {
                let listening = g.node(e.from).and_then(|n| match n {
                    Node::Published(p) => p.target_listening,
                    _ => None,
                });
                let (color, note) = match listening {
                    Some(false) => ("#c62828", " (nothing listening)"),
                    _ => ("#2e7d32", ""),
                };
                format!(
                    "label=\"{}{note}\", arrowhead=normal, color=\"{color}\", fontcolor=\"{color}\", penwidth=1.8, headport=w",
                    dot_escape(&e.label)
                )
            }
        };
        let _ = writeln!(o, "  {} -> {} [{attrs}];", dot_id(e.from), dot_id(e.to));
    }
    let _ = writeln!(o, "}}");
    o
}

fn mm_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mm_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart for pasting into Markdown.
pub fn to_mermaid(g: &Graph) -> String {
    let mut o = String::from("flowchart LR\n");
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for n in nss {
        let (extra, wildcard) = picture_listeners(n, few_interfaces(g, &n.id));
        let mut title = ns_title_for(n, true);
        title.extend(extra);
        let _ = writeln!(
            o,
            "  subgraph {}[\"{}\"]",
            mm_id(&n.id),
            mm_text(&title.join("<br/>"))
        );
        let mut any = false;
        for i in g.interfaces_in(&n.id) {
            any = true;
            let text = mm_text(&if_label(i, &wildcard).join("<br/>"));
            if i.kind == "bridge" {
                let _ = writeln!(o, "    {}((\"{}\"))", mm_id(&i.id), text);
            } else {
                let _ = writeln!(o, "    {}[\"{}\"]", mm_id(&i.id), text);
            }
        }
        for p in g.published_in(&n.id) {
            any = true;
            let _ = writeln!(
                o,
                "    {}>\"{} {}:{}\"]",
                mm_id(&p.id),
                p.proto,
                mm_text(&p.host_ip),
                p.host_port
            );
        }
        if !any {
            let _ = writeln!(o, "    {}_empty[\" \"]", mm_id(&n.id));
        }
        let _ = writeln!(o, "  end");
    }
    for e in drawn_edges(g) {
        let (a, b) = (mm_id(e.from), mm_id(e.to));
        let line = match e.kind {
            EdgeKind::Veth => format!("  {a} ---|\"{}\"| {b}", mm_text(&e.label)),
            EdgeKind::BridgePort => format!("  {a} -.- {b}"),
            EdgeKind::Lower => format!("  {a} -.-|\"{}\"| {b}", mm_text(&e.label)),
            EdgeKind::Published => format!("  {a} ==>|\"{}\"| {b}", mm_text(&e.label)),
        };
        let _ = writeln!(o, "{line}");
    }
    o
}

/// A text tree for terminals: each namespace, its interfaces and where each one leads.
pub fn to_text(g: &Graph) -> String {
    let mut o = String::new();
    let names: HashMap<&str, (String, String, &str)> = g
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Interface(i) => {
                let ns = g
                    .node(&i.namespace)
                    .and_then(|n| match n {
                        Node::Namespace(x) => Some(x.label.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let same = i.namespace.as_str();
                Some((
                    i.id.as_str(),
                    (format!("{} (if{})", i.name, i.index), ns, same),
                ))
            }
            _ => None,
        })
        .collect();
    let mut nss: Vec<&NamespaceNode> = g.namespaces().collect();
    // The current namespace first, then hosts (bridges, many links), then containers.
    nss.sort_by_key(|n| (-hostness(g, &n.id), n.label.clone()));
    for n in nss {
        let title = ns_title(n);
        let _ = writeln!(o, "{} [{}]", title[0], title[1]);
        for extra in &title[2..] {
            let _ = writeln!(o, "│   {extra}");
        }
        let items: Vec<&InterfaceNode> = g.interfaces_in(&n.id).collect();
        let pubs: Vec<&PublishedNode> = g.published_in(&n.id).collect();
        let total = items.len() + pubs.len();
        for (k, i) in items.iter().enumerate() {
            let last = k + 1 == total;
            let (branch, cont) = if last {
                ("└─", "   ")
            } else {
                ("├─", "│  ")
            };
            let mut line = format!("{branch} {} ({}, if{})", i.name, i.kind, i.index);
            if let Some(net) = &i.network {
                let _ = write!(line, "  network \"{net}\"");
            }
            if !i.addresses.is_empty() {
                let _ = write!(line, "  {}", i.addresses.join(" "));
            }
            if i.mtu != 1500 {
                let _ = write!(line, "  mtu {}", i.mtu);
            }
            if i.state != "up" && i.state != "unknown" {
                let _ = write!(line, "  [{}]", i.state);
            }
            let _ = writeln!(o, "{line}");
            for e in &g.edges {
                let other = if e.from == i.id {
                    &e.to
                } else if e.to == i.id {
                    &e.from
                } else {
                    continue;
                };
                // "name (ifN)", plus "in NS" when it lives in another namespace.
                let far = |id: &str| match names.get(id) {
                    Some((name, ns, nsid)) if *nsid != i.namespace => format!("{name} in {ns}"),
                    Some((name, _, _)) => name.clone(),
                    None => id.to_string(),
                };
                let desc = match e.kind {
                    EdgeKind::Veth => {
                        let mut d = format!("⇄ {}", far(other));
                        if let Some(mtu) = g.interface(other).map(|x| x.mtu).filter(|m| *m != i.mtu)
                        {
                            let _ = write!(d, "  MTU {}≠{}!", i.mtu, mtu);
                        }
                        d
                    }
                    EdgeKind::BridgePort if e.from == i.id => format!("port of {}", far(other)),
                    EdgeKind::BridgePort => continue,
                    EdgeKind::Lower if e.from == i.id => format!("{} on {}", i.kind, far(other)),
                    EdgeKind::Lower => format!("lower device of {}", far(other)),
                    EdgeKind::Published => format!("◀ published {}", e.label),
                };
                let _ = writeln!(o, "{cont}  {desc}");
            }
            for l in &i.listeners {
                let _ = writeln!(o, "{cont}  ● listen {}", listener_str(l));
            }
            if let Some(x) = &i.outside {
                let _ = writeln!(o, "{cont}  → {x} (not drawn)");
            }
        }
        for (k, p) in pubs.iter().enumerate() {
            let last = items.len() + k + 1 == total;
            let branch = if last { "└─" } else { "├─" };
            let to = g
                .edges
                .iter()
                .find(|e| e.from == p.id)
                .and_then(|e| names.get(e.to.as_str()))
                .map(|(name, ns, _)| format!("{name} in {ns}"))
                .unwrap_or_else(|| "(target not drawn)".into());
            let state = match p.target_listening {
                Some(true) => "",
                Some(false) => "  NOTHING LISTENING",
                None => "",
            };
            let _ = writeln!(
                o,
                "{branch} published {} {}:{} → {} via {}  [{}]{state}",
                p.proto,
                p.host_ip,
                p.host_port,
                p.target,
                to,
                p.via.join("; ")
            );
        }
        let _ = writeln!(o);
    }
    if g.hidden_empty_namespaces > 0 {
        let _ = writeln!(
            o,
            "({} namespaces holding only lo not shown; --include-empty shows them)",
            g.hidden_empty_namespaces
        );
    }
    o
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
