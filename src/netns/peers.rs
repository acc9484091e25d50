//! Veth peers across namespaces: IFLA_LINK + IFLA_LINK_NETNSID resolved with RTM_GETNSID.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use super::discover::{discover_with, ContainerRef, DiscoverOptions, NamespaceInfo};
use super::links::{Address, Link, Route, Rtnl};
use super::rtnl::NetlinkError;
use super::sockets::Owner;
use super::{NetNs, NetnsError, NsId};
use crate::engine::Intent;

/// The other end of a veth.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VethPeer {
    /// ifindex of the veth in the namespace that was asked.
    pub local_index: u32,
    /// Name of the veth in the namespace that was asked.
    pub local_name: String,
    /// The peer's ifindex, in the peer's namespace.
    pub peer_index: u32,
    /// The peer's name, when its namespace could be found and read.
    pub peer_name: Option<String>,
    /// The namespace holding the peer (None when it could not be found).
    pub peer_ns: Option<NsId>,
    /// A short label for that namespace (name, container, pid:N).
    pub peer_ns_label: Option<String>,
    /// The nsid, as seen from the namespace that was asked; None when the peer is in the same one.
    pub link_netnsid: Option<i32>,
}

/// Resolve the veth peers of every veth in `ns`, searching `candidates` for the peer namespaces.
pub fn veth_peers(ns: &NetNs, candidates: &[NamespaceInfo]) -> Result<Vec<VethPeer>, NetnsError> {
    let opened: Vec<(NetNs, String)> = candidates
        .iter()
        .filter_map(|c| c.open().ok().map(|n| (n, c.display_name())))
        .collect();
    // Inside `ns`: its links, and the nsid it has assigned to each candidate.
    let (links, nsids) = ns
        .run(
            || -> Result<(Vec<Link>, HashMap<i32, usize>), NetlinkError> {
                let mut rt = Rtnl::open()?;
                let links = rt.links()?;
                let mut nsids = HashMap::new();
                if links
                    .iter()
                    .any(|l| l.kind == "veth" && l.link_netnsid.is_some())
                {
                    for (i, (cand, _)) in opened.iter().enumerate() {
                        if let Ok(Some(id)) = rt.nsid_of(cand) {
                            nsids.insert(id, i);
                        }
                    }
                }
                Ok((links, nsids))
            },
        )?
        .map_err(|e| NetnsError::Thread(e.to_string()))?;

    let mut peer_links: HashMap<NsId, Vec<Link>> = HashMap::new();
    let mut out = Vec::new();
    for l in links.iter().filter(|l| l.kind == "veth") {
        let Some(peer_index) = l.link else { continue };
        let (peer_ns, label) = match l.link_netnsid {
            None => (Some(ns.clone()), Some(ns.label().to_string())),
            Some(id) => match nsids.get(&id) {
                Some(&i) => (Some(opened[i].0.clone()), Some(opened[i].1.clone())),
                None => (None, None),
            },
        };
        let peer_name = match &peer_ns {
            Some(p) => {
                if let std::collections::hash_map::Entry::Vacant(e) = peer_links.entry(p.id()) {
                    e.insert(
                        p.run(|| Rtnl::open().and_then(|mut r| r.links()).unwrap_or_default())?,
                    );
                }
                // Exact ifindex match, never a substring of a name.
                peer_links[&p.id()]
                    .iter()
                    .find(|x| x.index == peer_index)
                    .map(|x| x.name.clone())
            }
            None => None,
        };
        out.push(VethPeer {
            local_index: l.index,
            local_name: l.name.clone(),
            peer_index,
            peer_name,
            peer_ns: peer_ns.as_ref().map(|p| p.id()),
            peer_ns_label: label,
            link_netnsid: l.link_netnsid,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The machine-wide view: every namespace read once, every cross-namespace link resolved exactly.
// ---------------------------------------------------------------------------------------------

/// How much a [`HostScan`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Do not ask the container engines for names.
    pub skip_docker: bool,
}

/// One namespace's links, addresses and routes as read during a [`HostScan`].
#[derive(Debug, Clone)]
pub struct NsLinks {
    /// Who the namespace is (names, processes, containers).
    pub info: NamespaceInfo,
    /// Links sorted by ifindex.
    pub links: Vec<Link>,
    /// Addresses of those links.
    pub addresses: Vec<Address>,
    /// Main-table routes.
    pub routes: Vec<Route>,
    /// Why the namespace could not be read (it vanished, permission...), when it could not.
    pub error: Option<String>,
    /// nsid (as this namespace numbers the others) -> index of that namespace in the scan.
    nsids: HashMap<i32, usize>,
}

/// A link somewhere on the machine: which namespace of the scan, which ifindex in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkRef {
    /// Index into [`HostScan::namespaces`].
    pub ns: usize,
    /// ifindex inside that namespace.
    pub index: u32,
}

/// Every namespace on the machine with its links, and the nsid maps that join them.
#[derive(Debug, Clone)]
pub struct HostScan {
    /// The namespaces, in discovery order (sorted by identity).
    pub namespaces: Vec<NsLinks>,
    /// Index of the namespace nettool runs in, when it was found.
    pub current: Option<usize>,
    /// What the container engines intended (empty with `skip_docker`), read once for the scan.
    pub intent: Intent,
    handles: Vec<Option<NetNs>>,
}

/// Raise the soft open-files limit to the hard one: a scan keeps one fd per namespace open.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

type NsRead = Result<(Vec<Link>, Vec<Address>, Vec<Route>), String>;

fn read_namespace(ns: &NetNs) -> NsRead {
    ns.run(|| -> Result<_, NetlinkError> {
        let mut r = Rtnl::open()?;
        Ok((r.links()?, r.addresses()?, r.routes(false)?))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Run `f(i)` for i in 0..n on a few threads; results in order.
pub(crate) fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(2)
        .clamp(2, 8)
        .min(n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        mine.push((i, f(i)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

impl HostScan {
    /// Discover every namespace, read each one's links, and resolve the nsids its
    /// cross-namespace links (veth peers, macvlan parents) point at.
    ///
    /// `extra` namespaces are added when discovery did not see them (e.g. held only by an fd).
    pub fn scan(opts: ScanOptions, extra: &[NetNs]) -> HostScan {
        let intent = if opts.skip_docker {
            Intent::default()
        } else {
            Intent::read()
        };
        Self::scan_with(opts, extra, intent)
    }

    /// The same, naming containers from an intent already read.
    pub fn scan_with(opts: ScanOptions, extra: &[NetNs], intent: Intent) -> HostScan {
        raise_nofile_limit();
        let mut infos = discover_with(
            DiscoverOptions {
                skip_interfaces: true,
                skip_docker: opts.skip_docker,
            },
            &intent,
        );
        for ns in extra {
            if !infos.iter().any(|i| i.id == ns.id()) {
                infos.push(NamespaceInfo::known_only_by_path(ns));
            }
        }
        let handles: Vec<Option<NetNs>> = infos
            .iter()
            .map(|i| {
                extra
                    .iter()
                    .find(|e| e.id() == i.id)
                    .cloned()
                    .or_else(|| i.open().ok())
            })
            .collect();
        let reads = parallel_map(infos.len(), |i| match &handles[i] {
            Some(ns) => read_namespace(ns),
            None => Err("could not be opened (it went away)".to_string()),
        });
        let mut namespaces: Vec<NsLinks> = infos
            .into_iter()
            .zip(reads)
            .map(|(info, read)| {
                let (links, addresses, routes, error) = match read {
                    Ok((l, a, r)) => (l, a, r, None),
                    Err(e) => (Vec::new(), Vec::new(), Vec::new(), Some(e)),
                };
                NsLinks {
                    info,
                    links,
                    addresses,
                    routes,
                    error,
                    nsids: HashMap::new(),
                }
            })
            .collect();
        let current = namespaces.iter().position(|n| n.info.current);

        // Likely owners of a remote end: a veth at index `link` whose own IFLA_LINK points back.
        let mut back: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
        let mut by_index: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, n) in namespaces.iter().enumerate() {
            for l in &n.links {
                by_index.entry(l.index).or_default().push(i);
                if let Some(peer) = l.link {
                    back.entry((l.index, peer)).or_default().push(i);
                }
            }
        }
        let nsid_maps = parallel_map(namespaces.len(), |i| {
            let n = &namespaces[i];
            // nsid -> candidates to try first.
            let mut wanted: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
            for l in &n.links {
                let (Some(id), Some(target)) = (l.link_netnsid, l.link) else {
                    continue;
                };
                let likely = back
                    .get(&(target, l.index))
                    .filter(|_| l.kind == "veth")
                    .or_else(|| by_index.get(&target));
                let e = wanted.entry(id).or_default();
                for &c in likely.into_iter().flatten() {
                    if c != i && !e.contains(&c) {
                        e.push(c);
                    }
                }
            }
            if wanted.is_empty() {
                return HashMap::new();
            }
            let Some(me) = &handles[i] else {
                return HashMap::new();
            };
            let all = handles.len();
            me.run(|| {
                let mut known: HashMap<i32, usize> = HashMap::new();
                let Ok(mut rt) = Rtnl::open() else {
                    return known;
                };
                let mut asked: HashSet<usize> = HashSet::new();
                let mut ask = |c: usize, rt: &mut Rtnl, known: &mut HashMap<i32, usize>| {
                    if c == i || !asked.insert(c) {
                        return;
                    }
                    if let Some(h) = &handles[c] {
                        if let Ok(Some(id)) = rt.nsid_of(h) {
                            known.insert(id, c);
                        }
                    }
                };
                for (id, likely) in &wanted {
                    for &c in likely {
                        if known.contains_key(id) {
                            break;
                        }
                        ask(c, &mut rt, &mut known);
                    }
                    // Not among the likely ones: ask every namespace until found.
                    let mut c = 0;
                    while !known.contains_key(id) && c < all {
                        ask(c, &mut rt, &mut known);
                        c += 1;
                    }
                }
                known
            })
            .unwrap_or_default()
        });
        for (n, m) in namespaces.iter_mut().zip(nsid_maps) {
            n.nsids = m;
        }
        HostScan {
            namespaces,
            current,
            intent,
            handles,
        }
    }

    /// Index of the namespace with this identity.
    pub fn ns_index(&self, id: NsId) -> Option<usize> {
        self.namespaces.iter().position(|n| n.info.id == id)
    }

    /// An open handle to namespace `i` of the scan.
    pub fn handle(&self, i: usize) -> Option<&NetNs> {
        self.handles.get(i).and_then(|h| h.as_ref())
    }

    /// The link a [`LinkRef`] points at.
    pub fn link(&self, r: LinkRef) -> Option<&Link> {
        self.namespaces
            .get(r.ns)?
            .links
            .iter()
            .find(|l| l.index == r.index)
    }

    /// The link named `name` in namespace `ns` (names are unique within a namespace).
    pub fn by_name(&self, ns: usize, name: &str) -> Option<LinkRef> {
        self.namespaces
            .get(ns)?
            .links
            .iter()
            .find_map(|l| (l.name == name).then_some(LinkRef { ns, index: l.index }))
    }

    /// Every link called exactly `name`, in any namespace.
    pub fn everywhere_named(&self, name: &str) -> Vec<LinkRef> {
        (0..self.namespaces.len())
            .filter_map(|ns| self.by_name(ns, name))
            .collect()
    }

    /// Addresses on one link.
    pub fn addresses(&self, r: LinkRef) -> Vec<&Address> {
        self.namespaces
            .get(r.ns)
            .map(|n| n.addresses.iter().filter(|a| a.index == r.index).collect())
            .unwrap_or_default()
    }

    /// Where IFLA_LINK of `r` points: a veth's peer, a macvlan/ipvlan/vlan's parent.
    /// Exact: namespace by nsid, then ifindex equality. None when unresolvable.
    pub fn link_target(&self, r: LinkRef) -> Option<LinkRef> {
        let l = self.link(r)?;
        let target = l.link?;
        // Some drivers report IFLA_LINK = 0 or themselves for "no lower device".
        if target == 0 || (target == l.index && l.link_netnsid.is_none()) {
            return None;
        }
        let ns = match l.link_netnsid {
            None => r.ns,
            Some(id) => *self.namespaces[r.ns].nsids.get(&id)?,
        };
        let t = LinkRef { ns, index: target };
        self.link(t).map(|_| t)
    }

    /// The bridge (or bond) `r` is enslaved to.
    pub fn master(&self, r: LinkRef) -> Option<LinkRef> {
        let m = LinkRef {
            ns: r.ns,
            index: self.link(r)?.master?,
        };
        self.link(m).map(|_| m)
    }

    /// The ports of a bridge (links whose master is `r`).
    pub fn ports(&self, r: LinkRef) -> Vec<LinkRef> {
        self.namespaces[r.ns]
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
    pub fn children(&self, r: LinkRef) -> Vec<LinkRef> {
        let mut out = Vec::new();
        for (ns, n) in self.namespaces.iter().enumerate() {
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
    pub fn host_side_first(&self, a: LinkRef, b: LinkRef) -> bool {
        let cur = |r: LinkRef| Some(r.ns) == self.current;
        if cur(a) != cur(b) {
            return cur(a);
        }
        let bridged = |r: LinkRef| self.master(r).is_some();
        if bridged(a) != bridged(b) {
            return bridged(a);
        }
        // A container's end lives where processes or containers are; a host's end usually not.
        let boxed = |r: LinkRef| !self.namespaces[r.ns].info.containers.is_empty();
        if boxed(a) != boxed(b) {
            return boxed(b);
        }
        let size = |r: LinkRef| self.namespaces[r.ns].links.len();
        if size(a) != size(b) {
            return size(a) > size(b);
        }
        a <= b
    }

    /// Every veth pair on the machine, once each, host side first. The second end is None
    /// when the peer's namespace could not be found.
    pub fn veth_pairs(&self) -> Vec<(LinkRef, Option<LinkRef>)> {
        let mut seen: HashSet<LinkRef> = HashSet::new();
        let mut out = Vec::new();
        for (ns, n) in self.namespaces.iter().enumerate() {
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
            let key = |r: LinkRef| (self.namespaces[r.ns].info.display_name(), r.index);
            key(a.0).cmp(&key(b.0))
        });
        out
    }

    /// The summary of namespace `i` used in reports.
    pub fn ns_summary(&self, i: usize) -> NsSummary {
        let n = &self.namespaces[i];
        NsSummary {
            label: if n.info.current {
                "current".into()
            } else {
                n.info.display_name()
            },
            inode: n.info.id.inode,
            names: n.info.names.clone(),
            path: n.info.path.clone(),
            mounts: n.info.mounts.clone(),
            nsid: n.info.nsid,
            current: n.info.current,
            processes: n.info.processes.clone(),
            containers: n.info.containers.clone(),
        }
    }

    /// Describe one end of a link for a report.
    pub fn end(&self, r: LinkRef) -> Option<LinkEnd> {
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
    pub fn report(&self, r: LinkRef) -> Option<PeerReport> {
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
    pub fn close_names(&self, ns: usize, name: &str) -> Vec<String> {
        let Some(n) = self.namespaces.get(ns) else {
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
pub fn edit_distance(a: &str, b: &str) -> usize {
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
pub struct NsSummary {
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
pub struct LinkEnd {
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
pub struct PeerReport {
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
pub struct VethPair {
    /// The host side (the end in nettool's namespace, or the bridged end).
    pub host: LinkEnd,
    /// The other end, when found.
    pub peer: Option<LinkEnd>,
}

impl HostScan {
    /// Every veth pair as report rows.
    pub fn pair_rows(&self) -> Vec<VethPair> {
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
