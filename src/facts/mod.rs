//! ONE typed snapshot of the machine, read once per run: namespaces with their links,
//! addresses, routes (v4 and v6), listening sockets with owners and sysctls; the firewall
//! dumps (iptables and ip6tables, both backends, nft) that build the NAT model; UDP
//! conntrack; userland proxies recognised with the proxy's own argument parsers; nettool labs.
//!
//! A [`Snapshot`] is plain data (Serialize + Deserialize): `doctor --save-snapshot` records it,
//! `doctor --snapshot` and `topology --snapshot` replay it, and doctor's checks and topology's
//! graph are pure functions of it. doctor, topology, peer and `netns list|inspect` each read one
//! per run, with only the [`Parts`] they need. Only read.rs touches the machine.

pub(crate) mod conntrack;
pub(crate) mod firewall;
pub(crate) mod links;
pub(crate) mod procroot;
pub(crate) mod proxies;
pub(crate) mod read;
mod relevant;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::netns::discover::{ContainerRef, NamespaceInfo};
use crate::netns::links::{Address, Link, Route};
use crate::netns::sockets::{Owner, Proto, Socket};
use crate::netns::NsId;

pub(crate) use conntrack::CtEntry;
pub(crate) use firewall::FirewallDump;
pub(crate) use proxies::{ProxyMap, ProxyProcess};
pub(crate) use read::{add_firewalls, read, read_with, Parts, ReadOptions};

/// The format version written in [`Meta::format`]; a replay refuses other versions.
pub(crate) const FORMAT: u32 = 1;

/// What was read, by whom, and what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Snapshot format version ([`FORMAT`]).
    pub format: u32,
    /// The nettool version that read it.
    pub nettool: String,
    /// The nettool executable that read it: fixes that run nettool name this path.
    pub exe: String,
    /// Wall time of the read, in milliseconds.
    pub read_ms: u64,
    /// How many reads the snapshot took.
    pub reads: Reads,
}

/// The cost of one snapshot: the goal is one namespace entry per namespace and one /proc scan
/// per kind of fact.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Reads {
    /// Namespaces in the snapshot.
    pub namespaces: u64,
    /// Namespace entries (threads that entered a namespace through netns::NetNs::run).
    pub namespace_entries: u64,
    /// Netlink dump requests (links, addresses, routes, sock_diag), all namespaces together.
    pub netlink_dumps: u64,
    /// Walks over every /proc/PID.
    pub proc_scans: u64,
    /// External tools run (iptables-save, nft).
    pub tool_runs: u64,
}

/// One network namespace as read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NsFacts {
    /// Identity (st_dev, inode).
    pub id: NsId,
    /// How reports call it (name, container:NAME, pid:N).
    pub label: String,
    /// Its name under /run/netns, for `ip -n NAME` in fixes.
    pub name: Option<String>,
    /// A path that opens it, for `nsenter --net=PATH`.
    pub path: String,
    /// True for the namespace nettool ran in.
    pub current: bool,
    /// Every name under /run/netns (and /run/docker/netns, prefixed "docker/").
    #[serde(default)]
    pub names: Vec<String>,
    /// Other nsfs mount points holding it.
    #[serde(default)]
    pub mounts: Vec<std::path::PathBuf>,
    /// Its nsid as seen from the namespace nettool ran in.
    #[serde(default)]
    pub nsid: Option<i32>,
    /// Kernel threads in it (counted, not listed).
    #[serde(default)]
    pub kernel_threads: usize,
    /// Processes in it (thread group leaders).
    pub processes: Vec<Owner>,
    /// Containers found through cgroups / the engine.
    pub containers: Vec<ContainerRef>,
    /// Links, sorted by ifindex.
    pub links: Vec<Link>,
    /// Addresses of both families.
    pub addresses: Vec<Address>,
    /// Main-table routes of both families.
    pub routes: Vec<Route>,
    /// Listening TCP and unconnected UDP sockets, with owners.
    pub listeners: Vec<Socket>,
    /// Connected sockets, with owners (read only when asked: [`Parts::connections`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<Socket>,
    /// The sysctls that matter, by dotted name (the `conf.IFACE.` ones for each link).
    pub sysctls: BTreeMap<String, String>,
    /// Veth peers that could be resolved (relative to the host namespace).
    pub peers: Vec<Peer>,
    /// What each nsid this namespace gives (IFLA_LINK_NETNSID of its links) stands for:
    /// every link into another namespace (veth, macvlan...) resolves through it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nsids: BTreeMap<i32, NsId>,
    /// Its firewall, for a namespace other than the host whose rules were read (topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallDump>,
    /// Why it could not be read, when it could not.
    pub error: Option<String>,
}

/// The other end of a veth: namespace and ifindex there.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Peer {
    /// ifindex of the veth in this namespace.
    pub local_index: u32,
    /// The namespace holding the other end.
    pub peer_ns: NsId,
    /// Its ifindex there.
    pub peer_index: u32,
}

/// A nettool lab (from /run/nettool/NAME/state.json): what its containers run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabFacts {
    /// Lab name.
    pub name: String,
    /// Its host namespace.
    pub host: Option<NsId>,
    /// Its containers.
    pub containers: Vec<LabContainer>,
}

/// One container of a nettool lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabContainer {
    /// Container name in the lab file.
    pub name: String,
    /// Its namespace.
    pub ns: Option<NsId>,
    /// Its `run` command as argv (`nettool` replaced by this executable's path).
    pub run: Option<Vec<String>>,
}

/// Everything doctor judges, read once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Version, cost.
    pub meta: Meta,
    /// Identity of the host namespace (the one examined).
    pub host: NsId,
    /// Every namespace on the machine.
    pub namespaces: Vec<NsFacts>,
    /// The host's firewall dumps (the NAT model is built from them).
    pub firewall: FirewallDump,
    /// The host's TCP and UDP conntrack entries (IPv4 and IPv6).
    pub conntrack: Option<Vec<CtEntry>>,
    /// Userland proxies holding a listening socket in the host namespace (in any namespace
    /// with [`Parts::proxies_everywhere`]).
    pub proxies: Vec<ProxyProcess>,
    /// nettool labs on the machine.
    pub labs: Vec<LabFacts>,
    /// What each container engine intends (containers, states, networks, ports).
    pub intent: Option<crate::engine::Intent>,
    /// The question the snapshot was read for (doctor's request), so a replay asks it again.
    pub question: Option<Question>,
    /// What real connections did (doctor --probe): they are facts too, so a replay sees them.
    pub probes: Vec<ProbeResult>,
    /// Rootless Docker: the namespace rootlesskit relays the asked port into, read as a host
    /// of its own (dockerd's DNAT, docker-proxy and containers are there), with the question
    /// asked there (a connection to 127.0.0.1:PORT, what rootlesskit's child makes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_host: Option<Box<Snapshot>>,
}

/// Where a connection starts, by namespace identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum From {
    /// A process on the host connecting to 127.0.0.1 (or ::1).
    Localhost,
    /// A process on the host connecting to one of the host's own addresses.
    Host,
    /// Another machine; `client` is a namespace standing for it, when there is one.
    Outside {
        /// The client namespace.
        client: Option<NsId>,
    },
    /// A process inside this (container) namespace.
    Container {
        /// The container's namespace.
        ns: NsId,
    },
}

/// What doctor was asked: the path to follow, in the snapshot's terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Question {
    /// tcp or udp.
    pub proto: Proto,
    /// The published port (None with a container target: its published ports).
    pub port: Option<u16>,
    /// The destination the client uses (None: chosen from the source).
    pub dst: Option<IpAddr>,
    /// The source address (None: chosen from the source).
    pub src: Option<IpAddr>,
    /// The incoming interface for an outside packet.
    pub iif: Option<String>,
    /// Where the connection starts.
    pub from: From,
    /// Only paths ending in this namespace (`doctor container:web`).
    pub container: Option<NsId>,
    /// The container name as asked (`container:web`), for the words of the report.
    pub container_name: Option<String>,
    /// A name `ip netns exec` takes for the host, when it is not the current namespace.
    pub host_name: Option<String>,
    /// A path for `nsenter --net=` when the host has no name and is not the current one.
    pub host_path: Option<String>,
}

/// What one real connection did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProbeResult {
    /// The namespace the probe connected from.
    pub from_netns: Option<String>,
    /// Where it connected to.
    pub target: String,
    /// True when the connection was made and answered (for UDP: a datagram came back).
    pub ok: bool,
    /// TCP handshake completed.
    pub connected: bool,
    /// Bytes sent.
    pub sent: usize,
    /// Bytes received before the peer closed (or the wait ran out).
    pub received: usize,
    /// What happened, in words.
    pub outcome: String,
    /// Milliseconds from start to the end of the exchange.
    pub elapsed_ms: u64,
    /// What the kernel did with the probe's packets (nettool trace around the probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<ProbeTrace>,
}

/// The trace taken around a probe: where its packets died, rule or kernel reason.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProbeTrace {
    /// Packets traced (one per packet per namespace crossed).
    pub packets: usize,
    /// The first drop of the probe's traffic, when one was traced.
    pub drop: Option<ProbeDrop>,
    /// What the trace could not do or see (no tracefs, legacy iptables rules...).
    pub notes: Vec<String>,
}

/// One traced drop of a probe packet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProbeDrop {
    /// The namespace it died in, as the trace names it.
    pub netns: String,
    /// The container there, when known.
    pub container: Option<String>,
    /// The packet: protocol, addresses, TCP flags.
    pub packet: String,
    /// The chain of the rule that dropped it (family table chain).
    pub chain: Option<String>,
    /// The rule as iptables-nft-save prints it, else as nft does.
    pub rule: Option<String>,
    /// The engine that owns the chain (Docker, netavark, user...).
    pub engine: Option<String>,
    /// The kernel's drop reason (skb:kfree_skb), when no rule dropped it.
    pub reason: Option<String>,
    /// Where in the kernel.
    pub location: Option<String>,
    /// What the reason means.
    pub meaning: Option<String>,
}

/// A route lookup's answer, as `ip route get` would give it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteHit {
    /// local, unicast, blackhole, unreachable, prohibit...
    pub kind: String,
    /// Output interface.
    pub oif: Option<u32>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Preferred source.
    pub prefsrc: Option<IpAddr>,
}

impl Snapshot {
    /// The host namespace's facts.
    pub(crate) fn host(&self) -> &NsFacts {
        self.ns(self.host)
            .expect("a snapshot always holds its host namespace")
    }

    /// Who is behind each address ("container web of lab x", "container web", "netns lab-db"):
    /// the containers of the labs hosted here first (two labs may use the same addresses; the
    /// other lab's containers are not behind this host's rules), then every other namespace with
    /// a container or a name, except the one nettool runs in. Loopback and link-local addresses
    /// name nobody.
    pub(crate) fn address_owners(&self) -> std::collections::HashMap<IpAddr, String> {
        let mut out = std::collections::HashMap::new();
        let global = |a: &IpAddr| {
            !a.is_loopback() && !matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
        };
        let mut name = |ns: &NsFacts, who: &str| {
            for a in ns.addresses.iter().filter(|a| global(&a.address)) {
                out.entry(a.address).or_insert_with(|| who.to_string());
            }
        };
        for lab in self
            .labs
            .iter()
            .filter(|l| l.host.is_none_or(|h| h == self.host))
        {
            for c in &lab.containers {
                if let Some(ns) = c.ns.and_then(|id| self.ns(id)) {
                    name(ns, &format!("container {} of lab {}", c.name, lab.name));
                }
            }
        }
        for ns in self.namespaces.iter().filter(|n| !n.current) {
            let who = match (ns.containers.first(), ns.names.first()) {
                (Some(c), _) => format!("container {}", c.short_name()),
                (None, Some(n)) => format!("netns {n}"),
                (None, None) => continue,
            };
            name(ns, &who);
        }
        out
    }

    /// A namespace by identity.
    pub(crate) fn ns(&self, id: NsId) -> Option<&NsFacts> {
        self.namespaces.iter().find(|n| n.id == id)
    }

    /// A namespace by name, label, container name or id, or path (replays name them this way).
    pub(crate) fn ns_named(&self, name: &str) -> Option<&NsFacts> {
        let bare = name.strip_prefix("container:").unwrap_or(name);
        self.namespaces.iter().find(|n| {
            n.name.as_deref() == Some(bare)
                || n.label == name
                || n.label == format!("container:{bare}")
                || n.path == name
                || n.containers.iter().any(|c| {
                    c.name.as_deref() == Some(bare) || (bare.len() >= 12 && c.id.starts_with(bare))
                })
        })
    }

    /// The other end of veth `index` of `ns`: its namespace and link.
    pub(crate) fn peer_of(&self, ns: &NsFacts, index: u32) -> Option<(&NsFacts, &Link)> {
        let p = ns.peers.iter().find(|p| p.local_index == index)?;
        let other = self.ns(p.peer_ns)?;
        Some((other, other.link(p.peer_index)?))
    }

    /// The veth from `ns` into the host: the host-side link and `ns`'s IPv4 address on it.
    pub(crate) fn link_into_host(&self, ns: &NsFacts) -> Option<(&Link, Option<IpAddr>)> {
        let host = self.host();
        let p = ns.peers.iter().find(|p| p.peer_ns == host.id)?;
        let host_link = host.link(p.peer_index)?;
        let addr = ns
            .addresses
            .iter()
            .find(|a| a.index == p.local_index && a.address.is_ipv4())
            .map(|a| a.address);
        Some((host_link, addr))
    }

    /// Where the userland proxy `pid` forwards what its listener on `proto`/`local` takes,
    /// when it is a proxy we recognise (the map of that listen address, not another's).
    pub(crate) fn proxy_target(
        &self,
        pid: u32,
        proto: Proto,
        local: SocketAddr,
    ) -> Option<&ProxyMap> {
        self.proxies
            .iter()
            .filter(|p| p.pid == pid)
            .find_map(|p| p.map_for(proto, local))
    }

    /// The lab whose host namespace is the snapshot's host.
    pub(crate) fn lab(&self) -> Option<&LabFacts> {
        self.labs.iter().find(|l| l.host == Some(self.host))
    }

    /// The lab container living in namespace `ns`, with its `run` argv.
    pub(crate) fn lab_service(&self, ns: NsId) -> Option<(&str, &[String])> {
        let c = self.lab()?.containers.iter().find(|c| c.ns == Some(ns))?;
        Some((c.name.as_str(), c.run.as_deref()?))
    }
}

impl Snapshot {
    /// Keep only what a path from this host can cross: the host, the namespaces joined to it
    /// by a veth, and the ones the question names. Other hosts' namespaces (other labs, other
    /// engines' test hosts) go: a recorded snapshot stays small and says nothing about them.
    pub(crate) fn prune(&mut self) {
        // Rootless Docker's child namespace is a host of its own: pruned the same way.
        if let Some(r) = self.relayed_host.as_mut() {
            r.prune();
        }
        let host = self.host;
        let mut keep: Vec<NsId> = vec![host];
        if let Some(q) = &self.question {
            keep.extend(q.container);
            match q.from {
                From::Outside { client: Some(id) } | From::Container { ns: id } => keep.push(id),
                _ => {}
            }
            // The namespace of the container the engine publishes the asked port to, even
            // when no veth joins it to the host any more (doctor names that fault).
            if let (Some(port), Some(intent)) = (q.port, &self.intent) {
                let proto = q.proto.to_string();
                let publishers: Vec<&str> = intent
                    .containers
                    .iter()
                    .filter(|c| {
                        c.ports
                            .iter()
                            .any(|b| b.host_port == port && b.proto == proto)
                    })
                    .map(|c| c.id.as_str())
                    .collect();
                for n in &self.namespaces {
                    if n.containers
                        .iter()
                        .any(|r| publishers.contains(&r.id.as_str()))
                    {
                        keep.push(n.id);
                    }
                }
            }
        }
        // No veth joins a rootless container's namespace: rootlessport relays into it.
        let relayed = proxies::relayed_namespaces(&self.proxies);
        for n in &self.namespaces {
            if n.peers.iter().any(|p| p.peer_ns == host) || relayed.contains(&n.id.inode) {
                keep.push(n.id);
            }
        }
        if let Some(h) = self.ns(host) {
            keep.extend(h.peers.iter().map(|p| p.peer_ns));
        }
        self.namespaces.retain(|n| keep.contains(&n.id));
    }
}

impl NsFacts {
    /// What discovery knew of it, as `netns list` prints it; `interfaces` counts the links
    /// read (None when they were not read or could not be).
    pub(crate) fn info(&self) -> NamespaceInfo {
        NamespaceInfo {
            id: self.id,
            path: std::path::PathBuf::from(&self.path),
            names: self.names.clone(),
            mounts: self.mounts.clone(),
            nsid: self.nsid,
            processes: self.processes.clone(),
            kernel_threads: self.kernel_threads,
            containers: self.containers.clone(),
            interfaces: (self.error.is_none() && !self.links.is_empty())
                .then_some(self.links.len()),
            current: self.current,
        }
    }

    /// The firewall read in this namespace, if any: its own, or the snapshot's for the host.
    pub(crate) fn firewall<'a>(&'a self, snap: &'a Snapshot) -> Option<&'a FirewallDump> {
        self.firewall
            .as_ref()
            .or_else(|| (self.id == snap.host).then_some(&snap.firewall))
    }

    /// A link by ifindex.
    pub(crate) fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// One sysctl, as read.
    pub(crate) fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls.get(name).map(String::as_str)
    }

    /// True when one of its interfaces holds `ip`.
    pub(crate) fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.address == ip)
    }

    /// Its non-loopback, non-link-local addresses, for evidence.
    pub(crate) fn address_list(&self) -> String {
        let v: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| !a.address.is_loopback() && !is_link_local(a.address))
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// What `ip route get DST` answers here, from the recorded addresses and main-table
    /// routes: local for an address of the namespace, else the longest matching prefix
    /// (lowest metric first).
    pub(crate) fn route_to(&self, dst: IpAddr) -> Result<RouteHit, String> {
        if dst.is_loopback() || self.has_address(dst) {
            let oif = self
                .addresses
                .iter()
                .find(|a| a.address == dst)
                .map(|a| a.index)
                .or_else(|| {
                    self.links
                        .iter()
                        .find(|l| l.kind == "loopback")
                        .map(|l| l.index)
                });
            return Ok(RouteHit {
                kind: "local".into(),
                oif,
                gateway: None,
                prefsrc: Some(dst),
            });
        }
        let best = self
            .routes
            .iter()
            .filter(|r| family_matches(r, dst))
            .filter(|r| match r.destination {
                None => true,
                Some(d) => ipnet::IpNet::new(d, r.prefix_len)
                    .map(|n| n.contains(&dst))
                    .unwrap_or(false),
            })
            .max_by_key(|r| {
                (
                    if r.destination.is_none() {
                        0
                    } else {
                        r.prefix_len as i64 + 1
                    },
                    -(r.metric.unwrap_or(0) as i64),
                )
            });
        match best {
            Some(r) => Ok(RouteHit {
                kind: r.kind.clone(),
                oif: r.oif,
                gateway: r.gateway,
                prefsrc: r.prefsrc.or_else(|| {
                    self.addresses
                        .iter()
                        .find(|a| Some(a.index) == r.oif && a.address.is_ipv4() == dst.is_ipv4())
                        .map(|a| a.address)
                }),
            }),
            None => Err("Network is unreachable (no route)".into()),
        }
    }

    /// The interface a packet from another machine arrives on: the default route's, else the
    /// first up interface with an IPv4 address that is neither loopback, a bridge nor a port.
    pub(crate) fn external_link(&self) -> Option<&Link> {
        let default_oif = self
            .routes
            .iter()
            .find(|r| r.destination.is_none() && r.oif.is_some())
            .and_then(|r| r.oif);
        if let Some(l) = default_oif.and_then(|i| self.link(i)) {
            return Some(l);
        }
        self.links.iter().find(|l| {
            l.kind != "loopback"
                && l.kind != "bridge"
                && l.master.is_none()
                && self
                    .addresses
                    .iter()
                    .any(|a| a.index == l.index && a.address.is_ipv4())
        })
    }

    /// The main address of family `v6` (false: IPv4) on the external link, else any global one.
    pub(crate) fn primary_address_of(&self, v6: bool) -> Option<IpAddr> {
        let fits = |a: &&Address| {
            a.address.is_ipv6() == v6 && !a.address.is_loopback() && !is_link_local(a.address)
        };
        if let Some(l) = self.external_link() {
            if let Some(a) = self
                .addresses
                .iter()
                .filter(fits)
                .find(|a| a.index == l.index)
            {
                return Some(a.address);
            }
        }
        self.addresses.iter().find(fits).map(|a| a.address)
    }
}

fn family_matches(r: &Route, dst: IpAddr) -> bool {
    match (r.destination, r.gateway, r.prefsrc) {
        (Some(d), _, _) => d.is_ipv4() == dst.is_ipv4(),
        (None, Some(g), _) => g.is_ipv4() == dst.is_ipv4(),
        (None, None, Some(s)) => s.is_ipv4() == dst.is_ipv4(),
        // A default route with nothing to tell its family: netlink reports v4 first.
        (None, None, None) => dst.is_ipv4(),
    }
}

/// fe80::/10 or 169.254/16.
pub(crate) fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Errors reading or replaying a snapshot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FactsError {
    /// The host namespace could not be read at all.
    #[error("reading the host namespace {ns}: {why}")]
    Host {
        /// Which namespace.
        ns: String,
        /// Why.
        why: String,
    },
    /// A snapshot file could not be read or written.
    #[error("snapshot {path}: {why}")]
    File {
        /// The file.
        path: String,
        /// Why (the OS error or the JSON error, once).
        why: String,
    },
}

/// Write `snap` as pretty JSON to `path`.
pub(crate) fn save(snap: &Snapshot, path: &std::path::Path) -> Result<(), FactsError> {
    let err = |why: String| FactsError::File {
        path: path.display().to_string(),
        why,
    };
    let text = serde_json::to_string_pretty(snap).map_err(|e| err(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| err(e.to_string()))
}

/// Read a snapshot written by [`save`].
pub(crate) fn load(path: &std::path::Path) -> Result<Snapshot, FactsError> {
    let err = |why: String| FactsError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    from_json(&text).map_err(err)
}

/// Parse a snapshot from its JSON text.
pub(crate) fn from_json(text: &str) -> Result<Snapshot, String> {
    let snap: Snapshot = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if snap.meta.format != FORMAT {
        return Err(format!(
            "format {} (this nettool reads format {FORMAT})",
            snap.meta.format
        ));
    }
    if snap.ns(snap.host).is_none() {
        return Err("its host namespace is not among its namespaces".into());
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_named_by_their_container_and_a_lab_hosted_here_first() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("captures/doctor/docker-healthy.json");
        let mut snap = load(&path).unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let owners = snap.address_owners();
        assert_eq!(owners[&ip("172.17.0.2")], "container web");
        assert_eq!(owners[&ip("172.17.0.3")], "container dns");
        // Loopback and link-local name nobody; the host has no name nor container here.
        assert!(!owners.contains_key(&ip("127.0.0.1")));
        assert!(!owners.keys().any(|a| a.to_string().starts_with("fe80:")));
        assert!(!owners.contains_key(&ip("192.0.2.1")));
        // A lab hosted here says whose container it is; a lab of another host says nothing.
        let id_of = |label: &str| {
            snap.namespaces
                .iter()
                .find(|n| n.label == label)
                .unwrap()
                .id
        };
        let (web, dns) = (id_of("container:web"), id_of("container:dns"));
        let lab = |name: &str, host: NsId, ctr: &str, ns: NsId| LabFacts {
            name: name.into(),
            host: Some(host),
            containers: vec![LabContainer {
                name: ctr.into(),
                ns: Some(ns),
                run: None,
            }],
        };
        let elsewhere = NsId { dev: 4, inode: 1 };
        snap.labs = vec![
            lab("other", elsewhere, "db", dns),
            lab("here", snap.host, "front", web),
        ];
        let owners = snap.address_owners();
        assert_eq!(owners[&ip("172.17.0.2")], "container front of lab here");
        assert_eq!(owners[&ip("172.17.0.3")], "container dns");
    }
}
