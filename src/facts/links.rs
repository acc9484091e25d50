//! The machine's links as one graph, read from a [`Snapshot`]: every cross-namespace link
//! (veth peer, macvlan/ipvlan/vlan lower device) resolved exactly through the nsids each
//! namespace gives, bridge ports, and the report types `peer` prints. Pure: no read here.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use super::Snapshot;
use crate::netns::discover::ContainerRef;
use crate::netns::links::{Address, Link};
use crate::netns::sockets::Owner;
use crate::netns::NsId;

/// A link somewhere on the machine: which namespace of the snapshot, which ifindex in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LinkRef {
    /// Index into [`Snapshot::namespaces`].
    pub ns: usize,
    /// ifindex inside that namespace.
    pub index: u32,
}

/// The links of a snapshot joined across namespaces.
#[derive(Debug, Clone)]
pub(crate) struct LinkMap<'a> {
    /// The snapshot it reads.
    pub snap: &'a Snapshot,
    /// Index of the namespace nettool ran in, when the snapshot holds it.
    pub current: Option<usize>,
    /// Per namespace: nsid (as that namespace numbers the others) -> namespace index.
    nsids: Vec<HashMap<i32, usize>>,
    /// Per namespace: its short name in reports ("current", container:NAME, a name, pid:N).
    display: Vec<String>,
}

impl<'a> LinkMap<'a> {
    /// Join the links of `snap`.
    pub(crate) fn new(snap: &'a Snapshot) -> LinkMap<'a> {
        let index_of = |id: NsId| snap.namespaces.iter().position(|x| x.id == id);
        let nsids = snap
            .namespaces
            .iter()
            .map(|n| {
                let mut m: HashMap<i32, usize> = n
                    .nsids
                    .iter()
                    .filter_map(|(&id, peer)| Some((id, index_of(*peer)?)))
                    .collect();
                // Snapshots recorded before nsids were kept still name each veth's peer.
                for p in &n.peers {
                    let nsid = n.link(p.local_index).and_then(|l| l.link_netnsid);
                    if let (Some(id), Some(j)) = (nsid, index_of(p.peer_ns)) {
                        m.entry(id).or_insert(j);
                    }
                }
                m
            })
            .collect();
        LinkMap {
            snap,
            current: snap.namespaces.iter().position(|n| n.current),
            nsids,
            display: snap
                .namespaces
                .iter()
                .map(|n| n.info().display_name())
                .collect(),
        }
    }
}

impl LinkMap<'_> {
    /// Index of the namespace with this identity.
    pub(crate) fn ns_index(&self, id: NsId) -> Option<usize> {
        self.snap.namespaces.iter().position(|n| n.id == id)
    }

    /// The link a [`LinkRef`] points at.
    pub(crate) fn link(&self, r: LinkRef) -> Option<&Link> {
        self.snap
            .namespaces
            .get(r.ns)?
            .links
            .iter()
            .find(|l| l.index == r.index)
    }

    /// The link named `name` in namespace `ns` (names are unique within a namespace).
    pub(crate) fn by_name(&self, ns: usize, name: &str) -> Option<LinkRef> {
        self.snap
            .namespaces
            .get(ns)?
            .links
            .iter()
            .find_map(|l| (l.name == name).then_some(LinkRef { ns, index: l.index }))
    }

    /// Every link called exactly `name`, in any namespace.
    pub(crate) fn everywhere_named(&self, name: &str) -> Vec<LinkRef> {
        (0..self.snap.namespaces.len())
            .filter_map(|ns| self.by_name(ns, name))
            .collect()
    }

    /// Addresses on one link.
    pub(crate) fn addresses(&self, r: LinkRef) -> Vec<&Address> {
        self.snap
            .namespaces
            .get(r.ns)
            .map(|n| n.addresses.iter().filter(|a| a.index == r.index).collect())
            .unwrap_or_default()
    }

    /// Where IFLA_LINK of `r` points: a veth's peer, a macvlan/ipvlan/vlan's parent.
    /// Exact: namespace by nsid, then ifindex equality. None when unresolvable.
    pub(crate) fn link_target(&self, r: LinkRef) -> Option<LinkRef> {
        let l = self.link(r)?;
        let target = l.link?;
        // Some drivers report IFLA_LINK = 0 or themselves for "no lower device".
        if target == 0 || (target == l.index && l.link_netnsid.is_none()) {
            return None;
        }
        let ns = match l.link_netnsid {
            None => r.ns,
            Some(id) => *self.nsids[r.ns].get(&id)?,
        };
        let t = LinkRef { ns, index: target };
        self.link(t).map(|_| t)
    }

    /// The bridge (or bond) `r` is enslaved to.
    pub(crate) fn master(&self, r: LinkRef) -> Option<LinkRef> {
        let m = LinkRef {
            ns: r.ns,
            index: self.link(r)?.master?,
        };
        self.link(m).map(|_| m)
    }

    /// The ports of a bridge (links whose master is `r`).
    pub(crate) fn ports(&self, r: LinkRef) -> Vec<LinkRef> {
        self.snap.namespaces[r.ns]
            .links
            .iter()
            .filter(|l| l.master == Some(r.index))
            .map(|l| LinkRef {
                ns: r.ns,
                index: l.index,
            })
            .collect()
    }

    /// Links in any namespace built on top of `r` (macvlan, ipvlan, vlan...): their IFLA_LINK
    /// resolves to `r`. Veth peers are not children.
    pub(crate) fn children(&self, r: LinkRef) -> Vec<LinkRef> {
        let mut out = Vec::new();
        for (ns, n) in self.snap.namespaces.iter().enumerate() {
            for l in &n.links {
                if l.kind == "veth" || l.link.is_none() {
                    continue;
                }
                let me = LinkRef { ns, index: l.index };
                if me != r && self.link_target(me) == Some(r) {
                    out.push(me);
                }
            }
        }
        out
    }

    /// True when `a` is the "host side" of the pair (a, b). A judgement call: the end in the
    /// namespace nettool runs in, then the end enslaved to a bridge, then the end outside a
    /// container, then the end in the namespace with more links.
    pub(crate) fn host_side_first(&self, a: LinkRef, b: LinkRef) -> bool {
        let cur = |r: LinkRef| Some(r.ns) == self.current;
        if cur(a) != cur(b) {
            return cur(a);
        }
        let bridged = |r: LinkRef| self.master(r).is_some();
        if bridged(a) != bridged(b) {
            return bridged(a);
        }
        // A container's end lives where processes or containers are; a host's end usually not.
        let boxed = |r: LinkRef| !self.snap.namespaces[r.ns].containers.is_empty();
        if boxed(a) != boxed(b) {
            return boxed(b);
        }
        let size = |r: LinkRef| self.snap.namespaces[r.ns].links.len();
        if size(a) != size(b) {
            return size(a) > size(b);
        }
        a <= b
    }

    /// Every veth pair on the machine, once each, host side first. The second end is None
    /// when the peer's namespace could not be found.
    pub(crate) fn veth_pairs(&self) -> Vec<(LinkRef, Option<LinkRef>)> {
        let mut seen: HashSet<LinkRef> = HashSet::new();
        let mut out = Vec::new();
        for (ns, n) in self.snap.namespaces.iter().enumerate() {
            for l in n.links.iter().filter(|l| l.kind == "veth") {
                let me = LinkRef { ns, index: l.index };
                if seen.contains(&me) {
                    continue;
                }
                seen.insert(me);
                match self.link_target(me) {
                    Some(p) => {
                        seen.insert(p);
                        if self.host_side_first(me, p) {
                            out.push((me, Some(p)));
                        } else {
                            out.push((p, Some(me)));
                        }
                    }
                    None => out.push((me, None)),
                }
            }
        }
        out.sort_by(|a, b| {
            let key = |r: LinkRef| (self.display[r.ns].clone(), r.index);
            key(a.0).cmp(&key(b.0))
        });
        out
    }

    /// The summary of namespace `i` used in reports.
    pub(crate) fn ns_summary(&self, i: usize) -> NsSummary {
        let n = &self.snap.namespaces[i];
        NsSummary {
            label: self.display[i].clone(),
            inode: n.id.inode,
            names: n.names.clone(),
            path: PathBuf::from(&n.path),
            mounts: n.mounts.clone(),
            nsid: n.nsid,
            current: n.current,
            processes: n.processes.clone(),
            containers: n.containers.clone(),
        }
    }

    /// Describe one end of a link for a report.
    pub(crate) fn end(&self, r: LinkRef) -> Option<LinkEnd> {
        let l = self.link(r)?;
        let master = self.master(r).and_then(|m| self.link(m));
        Some(LinkEnd {
            name: l.name.clone(),
            index: l.index,
            kind: l.kind.clone(),
            mtu: l.mtu,
            mac: l.mac.clone(),
            state: l.oper_state.clone(),
            admin_up: l.admin_up,
            addresses: self
                .addresses(r)
                .iter()
                .map(|a| format!("{}/{}", a.address, a.prefix_len))
                .collect(),
            master: master.map(|m| m.name.clone()),
            master_kind: master.map(|m| m.kind.clone()),
            link_netnsid: l.link_netnsid,
            namespace: self.ns_summary(r.ns),
        })
    }

    /// The full report on one link: what it is and what is on its other side.
    pub(crate) fn report(&self, r: LinkRef) -> Option<PeerReport> {
        let l = self.link(r)?;
        let interface = self.end(r)?;
        let target = self.link_target(r);
        let mut rep = PeerReport {
            kind: l.kind.clone(),
            interface,
            peer: None,
            peer_unresolved: None,
            parent: None,
            ports: Vec::new(),
            children: Vec::new(),
            mtu_mismatch: None,
        };
        match l.kind.as_str() {
            "veth" => match target {
                Some(p) => {
                    let peer = self.end(p)?;
                    if peer.mtu != l.mtu {
                        rep.mtu_mismatch = Some(format!(
                            "MTU mismatch: {} has {} but its peer {} has {}; packets larger than {} are dropped one way",
                            l.name,
                            l.mtu,
                            peer.name,
                            peer.mtu,
                            l.mtu.min(peer.mtu)
                        ));
                    }
                    rep.peer = Some(peer);
                }
                None => {
                    rep.peer_unresolved = Some(match (l.link, l.link_netnsid) {
                        (Some(i), Some(id)) => format!(
                            "peer is ifindex {i} in nsid {id}, a namespace no process, name or mount holds"
                        ),
                        (Some(i), None) => format!("peer ifindex {i} not found"),
                        _ => "the kernel reports no peer".into(),
                    })
                }
            },
            _ => {
                rep.parent = target.and_then(|p| self.end(p));
                if l.kind == "bridge" {
                    rep.ports = self.ports(r).into_iter().filter_map(|p| self.end(p)).collect();
                }
                rep.children = self
                    .children(r)
                    .into_iter()
                    .filter_map(|c| self.end(c))
                    .collect();
            }
        }
        Some(rep)
    }

    /// Names in namespace `ns` close to `name` (edit distance <= 2, or one contains the other):
    /// suggestions for an error message, never used to match.
    pub(crate) fn close_names(&self, ns: usize, name: &str) -> Vec<String> {
        let Some(n) = self.snap.namespaces.get(ns) else {
            return Vec::new();
        };
        let mut scored: Vec<(usize, String)> = n
            .links
            .iter()
            .filter_map(|l| {
                let d = edit_distance(&l.name, name);
                let related = !name.is_empty() && (l.name.contains(name) || name.contains(&l.name));
                (d <= 2 || related).then(|| (d, l.name.clone()))
            })
            .collect();
        scored.sort();
        scored.into_iter().map(|(_, n)| n).take(5).collect()
    }
}

/// Levenshtein distance, for suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A namespace as reports show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct NsSummary {
    /// Short label: "current", a name, container:NAME, pid:N or inode:N.
    pub label: String,
    /// Inode (what `readlink /proc/PID/ns/net` shows).
    pub inode: u64,
    /// Names under /run/netns (and docker/...).
    pub names: Vec<String>,
    /// A path that opens it.
    pub path: PathBuf,
    /// Other nsfs mounts holding it (e.g. Docker's sandbox file under its exec root).
    pub mounts: Vec<PathBuf>,
    /// Its nsid as seen from the namespace nettool runs in.
    pub nsid: Option<i32>,
    /// True for the namespace nettool runs in.
    pub current: bool,
    /// Processes in it.
    pub processes: Vec<Owner>,
    /// Containers those processes belong to.
    pub containers: Vec<ContainerRef>,
}

/// One end of a link pair, with its namespace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct LinkEnd {
    /// Interface name.
    pub name: String,
    /// ifindex inside its namespace.
    pub index: u32,
    /// veth, bridge, macvlan...
    pub kind: String,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Option<String>,
    /// Operational state.
    pub state: String,
    /// IFF_UP.
    pub admin_up: bool,
    /// Addresses as CIDR strings.
    pub addresses: Vec<String>,
    /// The bridge/bond it is enslaved to.
    pub master: Option<String>,
    /// Kind of that master (bridge, bond, ...).
    pub master_kind: Option<String>,
    /// IFLA_LINK_NETNSID: the nsid, as seen from this end's namespace, of the other end's.
    pub link_netnsid: Option<i32>,
    /// The namespace it lives in.
    pub namespace: NsSummary,
}

/// What `nettool peer IFACE` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct PeerReport {
    /// The interface asked about.
    pub interface: LinkEnd,
    /// Its kind, repeated for convenience.
    pub kind: String,
    /// For a veth: the other end.
    pub peer: Option<LinkEnd>,
    /// For a veth whose other end could not be found: why.
    pub peer_unresolved: Option<String>,
    /// For macvlan/ipvlan/vlan/vxlan...: the lower device (possibly in another namespace).
    pub parent: Option<LinkEnd>,
    /// For a bridge: its ports.
    pub ports: Vec<LinkEnd>,
    /// Devices built on top of this one (macvlan/ipvlan/vlan children, in any namespace).
    pub children: Vec<LinkEnd>,
    /// A warning when the two ends of a veth have different MTUs.
    pub mtu_mismatch: Option<String>,
}

/// One row of `nettool peer --all`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct VethPair {
    /// The host side (the end in nettool's namespace, or the bridged end).
    pub host: LinkEnd,
    /// The other end, when found.
    pub peer: Option<LinkEnd>,
}

impl LinkMap<'_> {
    /// Every veth pair as report rows.
    pub(crate) fn pair_rows(&self) -> Vec<VethPair> {
        self.veth_pairs()
            .into_iter()
            .filter_map(|(a, b)| {
                Some(VethPair {
                    host: self.end(a)?,
                    peer: b.and_then(|b| self.end(b)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod scan_tests {
    #[test]
    fn distance() {
        assert_eq!(super::edit_distance("veth1", "veth1"), 0);
        assert_eq!(super::edit_distance("veth1", "veth12"), 1);
        assert_eq!(super::edit_distance("eth0", "ehh1"), 2);
    }
}
