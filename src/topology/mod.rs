//! The host's container networking as a graph: namespaces holding interfaces, veth pairs,
//! bridge ports, lower devices and published ports, with renderers to DOT, Mermaid and a text tree.
//!
//! The graph is a pure function of a facts [`Snapshot`](crate::facts::Snapshot)
//! ([`collect::collect`]): links and their joins from [`crate::facts::links::LinkMap`],
//! listeners with owners, proxies recognised with their own parsers, published ports from the
//! NAT rules the snapshot holds. [`collect::read`] reads that snapshot live; `topology --snapshot`
//! replays a recorded one (`doctor --save-snapshot`). Renderers ([`render`]) return strings.

pub(crate) mod collect;
pub(crate) mod render;

use std::net::SocketAddr;

use serde::Serialize;

use crate::netns::sockets::Proto;
use crate::netns::{NetnsError, NsId};

pub(crate) use collect::{collect, read};
pub(crate) use render::{to_dot, to_mermaid, to_text};

/// Errors collecting a topology.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TopologyError {
    /// A namespace of the scope could not be found or read.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The namespace asked for was not found by the read.
    #[error("namespace {0} was not found on the machine (did it just go away?)")]
    Missing(String),
    /// Reading the machine failed.
    #[error(transparent)]
    Facts(#[from] crate::facts::FactsError),
}

/// What part of the machine to draw; namespaces by identity, as the snapshot holds them.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// Every namespace on the machine (empty ones, only `lo`, are left out unless asked).
    Host,
    /// One namespace in full, and the interfaces of its neighbours that connect to it.
    Around {
        /// The namespace.
        ns: NsId,
        /// How it was named ("web", "current").
        label: String,
    },
    /// Exactly these namespaces, in full (a lab: its host namespace and its containers).
    Set {
        /// A name for the scope ("lab web").
        label: String,
        /// The namespaces, each with the container name it stands for, if any; the first is
        /// the host.
        namespaces: Vec<(NsId, Option<String>)>,
        /// Bridge interface name -> the network it stands for (in the first namespace).
        networks: Vec<(String, String)>,
    },
}

/// Knobs for [`collect()`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CollectOptions {
    /// Do not ask the Docker API for container names.
    pub skip_docker: bool,
    /// Keep namespaces that hold nothing but `lo` and no listener (whole-host scope).
    pub include_empty: bool,
    /// Do not read NAT rules (published ports come from proxies only).
    pub skip_nat: bool,
}

/// A listening socket as drawn.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Listener {
    /// tcp or udp.
    pub proto: Proto,
    /// Local address and port.
    pub address: SocketAddr,
    /// Owning processes as pid/comm.
    pub processes: Vec<String>,
}

/// A namespace: a box holding interfaces.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NamespaceNode {
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
pub(crate) struct InterfaceNode {
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
pub(crate) struct PublishedNode {
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
pub(crate) enum Node {
    /// A network namespace.
    Namespace(NamespaceNode),
    /// An interface.
    Interface(InterfaceNode),
    /// A published port.
    Published(PublishedNode),
}

impl Node {
    /// The node's id.
    pub(crate) fn id(&self) -> &str {
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
pub(crate) enum EdgeKind {
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
pub(crate) struct Edge {
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
pub(crate) struct Graph {
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
    pub(crate) fn node(&self, id: &str) -> Option<&Node> {
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
