//! The live read: every namespace entered once (links, addresses, routes, listening sockets,
//! sysctls and the nsids that join veths, in one thread per namespace), one /proc scan for
//! socket owners, the host's firewall dumped by its tools and conntrack over ctnetlink, in parallel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::engine::{cni, docker, kube, lab, Intent};
use crate::lab::state as lab_state;
use crate::netns::discover::{discover_with, DiscoverOptions, NamespaceInfo};
use crate::netns::links::{Address, Link, Route, Rtnl};
use crate::netns::peers::parallel_map;
use crate::netns::rtnl::NetlinkError;
use crate::netns::sockets::{self, Socket, Which};
use crate::netns::{sysctl, NetNs, NsId};

use super::{
    conntrack, firewall, proxies, FactsError, FirewallDump, LabContainer, LabFacts, Meta, NsFacts,
    Peer, Reads, Snapshot, FORMAT,
};

/// What to read.
#[derive(Debug, Clone)]
pub(crate) struct ReadOptions {
    /// The namespace acting as the host (its firewall, conntrack and proxies are read).
    pub host: NetNs,
    /// Namespaces to include even when discovery does not see them (held only by an fd).
    pub extra: Vec<NetNs>,
    /// Do not ask the Docker API for container names.
    pub skip_docker: bool,
    /// Dump the host's TCP and UDP conntrack (one ctnetlink dump; doctor's).
    pub conntrack: bool,
}

impl ReadOptions {
    /// Read with `host` as the host namespace: no extra namespaces, Docker asked, no conntrack.
    pub(crate) fn host(host: NetNs) -> Self {
        ReadOptions {
            host,
            extra: Vec::new(),
            skip_docker: false,
            conntrack: false,
        }
    }
}

/// Which facts a read gathers: everything for doctor, links and addresses for `peer`. Each part
/// left out is work not done (a netlink dump per namespace, the /proc scan for socket owners,
/// five firewall tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    /// Enter each namespace for its links (and the nsids that join them); without it a
    /// namespace is only what discovery knows (names, processes, containers).
    pub links: bool,
    /// Addresses of both families.
    pub addresses: bool,
    /// Main-table routes.
    pub routes: bool,
    /// Listening sockets, with their owners (one /proc scan).
    pub listeners: bool,
    /// The sysctls that matter.
    pub sysctls: bool,
    /// The host's firewall dumps.
    pub firewall: bool,
    /// Userland proxies among the owners of the host's listeners.
    pub proxies: bool,
    /// Proxies among the owners of every namespace's listeners, not only the host's.
    pub proxies_everywhere: bool,
    /// Every cross-namespace link resolved (veth peers and lower devices between any two
    /// namespaces), not only those into and out of the host: a second entry into the
    /// namespaces whose peers are elsewhere.
    pub all_peers: bool,
    /// nettool labs' saved state.
    pub labs: bool,
    /// Only the host is read in full; another namespace is entered only when a link of the
    /// host leads into it, and then for its links alone (to name the other end). Discovery
    /// still lists every namespace.
    pub one_namespace: bool,
    /// Connected sockets too, not only listeners (in [`NsFacts::connections`]).
    pub connections: bool,
    /// Routes, sockets and sysctls are read in the host only; the other namespaces give what
    /// the other parts ask (links, addresses).
    pub host_details_only: bool,
    /// The firewall dumps carry each rule's packet and byte counters (`iptables-save -c`).
    pub firewall_counters: bool,
}

impl Parts {
    /// Everything (doctor).
    pub(crate) const ALL: Parts = Parts {
        links: true,
        addresses: true,
        routes: true,
        listeners: true,
        sysctls: true,
        firewall: true,
        proxies: true,
        proxies_everywhere: false,
        all_peers: false,
        labs: true,
        one_namespace: false,
        connections: false,
        host_details_only: false,
        firewall_counters: false,
    };
    /// Discovery only: no namespace entered (`netns list --no-interfaces`).
    pub(crate) const NONE: Parts = Parts {
        links: false,
        addresses: false,
        routes: false,
        listeners: false,
        sysctls: false,
        firewall: false,
        proxies: false,
        proxies_everywhere: false,
        all_peers: false,
        labs: false,
        one_namespace: false,
        connections: false,
        host_details_only: false,
        firewall_counters: false,
    };
    /// Each namespace entered once for its links, nothing more (`netns list` counts them).
    pub(crate) const NAMESPACES: Parts = Parts {
        links: true,
        ..Parts::NONE
    };
    /// Links, addresses and every link between namespaces (`peer`).
    pub(crate) const PEERS: Parts = Parts {
        links: true,
        addresses: true,
        all_peers: true,
        ..Parts::NONE
    };
    /// What `topology` draws: links, addresses, routes, listeners and the proxies behind them
    /// anywhere (firewalls are added for the namespaces drawn, see [`add_firewalls`]).
    pub(crate) const TOPOLOGY: Parts = Parts {
        links: true,
        addresses: true,
        routes: true,
        listeners: true,
        proxies: true,
        proxies_everywhere: true,
        all_peers: true,
        ..Parts::NONE
    };
    /// The host's firewall (with counters), addresses, routes and forwarding, and every
    /// namespace's addresses and who is in it, to name what is behind an address (explain-nat).
    pub(crate) const EXPLAIN_NAT: Parts = Parts {
        links: true,
        addresses: true,
        routes: true,
        sysctls: true,
        firewall: true,
        firewall_counters: true,
        labs: true,
        host_details_only: true,
        ..Parts::NONE
    };
    /// One namespace in full and the names at the other end of its links (`netns inspect`).
    pub(crate) const ONE_NAMESPACE: Parts = Parts {
        links: true,
        addresses: true,
        routes: true,
        listeners: true,
        sysctls: true,
        one_namespace: true,
        ..Parts::NONE
    };
}

/// What one namespace thread brings back.
struct Raw {
    links: Vec<Link>,
    addresses: Vec<Address>,
    routes: Vec<Route>,
    listeners: Vec<Socket>,
    connections: Vec<Socket>,
    sysctls: BTreeMap<String, String>,
    /// nsid (as this namespace numbers them) -> index of that namespace in the read.
    nsids: HashMap<i32, usize>,
    /// The host's conntrack, dumped while inside it (None: not asked, or the dump failed).
    conntrack: Option<Vec<super::CtEntry>>,
}

impl Raw {
    /// A namespace not entered.
    fn empty() -> Raw {
        Raw {
            links: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            listeners: Vec::new(),
            connections: Vec::new(),
            sysctls: BTreeMap::new(),
            nsids: HashMap::new(),
            conntrack: None,
        }
    }
}

fn counters() -> (u64, u64, u64, u64) {
    (
        crate::netns::rtnl::DUMPS.load(Ordering::Relaxed),
        crate::netns::ENTRIES.load(Ordering::Relaxed),
        crate::netns::PROC_SCANS.load(Ordering::Relaxed),
        firewall::TOOL_RUNS.load(Ordering::Relaxed),
    )
}

/// Read one namespace from inside it. The host asks the nsid of every other namespace;
/// the others only the host's (their veths lead there). With `conntrack`, the host's
/// conntrack is dumped in the same entry.
fn read_inside(
    i: usize,
    handles: &[Option<NetNs>],
    host: usize,
    parts: &Parts,
    conntrack: bool,
) -> Result<Raw, String> {
    if !parts.links {
        return Ok(Raw::empty());
    }
    let Some(ns) = &handles[i] else {
        return Err("could not be opened (it went away)".into());
    };
    // The host always gets every part asked; the others may be spared the details.
    let details = i == host || !parts.host_details_only;
    ns.run(|| -> Result<Raw, NetlinkError> {
        let mut r = Rtnl::open()?;
        let links = r.links()?;
        let addresses = if parts.addresses {
            r.addresses()?
        } else {
            Vec::new()
        };
        let routes = if parts.routes && details {
            r.routes(false)?
        } else {
            Vec::new()
        };
        let (listeners, connections) = match (parts.listeners && details, parts.connections) {
            (false, _) => (Vec::new(), Vec::new()),
            (true, false) => (sockets::list_unowned(Which::Listening)?, Vec::new()),
            (true, true) => sockets::list_unowned(Which::All)?
                .into_iter()
                .partition(|s| s.is_listening()),
        };
        let mut sysctls = BTreeMap::new();
        if parts.sysctls && details {
            for s in sysctl::interesting() {
                sysctls.insert(s.name, s.value);
            }
            for l in &links {
                for key in ["route_localnet", "rp_filter", "forwarding"] {
                    let name = format!("net.ipv4.conf.{}.{key}", l.name);
                    if let Some(v) = sysctl::read(&name) {
                        sysctls.insert(name, v);
                    }
                }
            }
        }
        let mut nsids = HashMap::new();
        if links.iter().any(|l| l.link_netnsid.is_some()) {
            let ask: Vec<usize> = if i == host {
                (0..handles.len()).filter(|&j| j != i).collect()
            } else {
                vec![host]
            };
            for j in ask {
                if let Some(h) = &handles[j] {
                    if let Ok(Some(id)) = r.nsid_of(h) {
                        nsids.insert(id, j);
                    }
                }
            }
        }
        Ok(Raw {
            links,
            addresses,
            routes,
            listeners,
            connections,
            sysctls,
            nsids,
            conntrack: (conntrack && i == host)
                .then(conntrack::read_here)
                .flatten(),
        })
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// [`Parts::one_namespace`]: the host in full, then (in parallel) the links of each namespace
/// a link of the host leads into; every other namespace is not entered.
fn read_host_and_its_peers(
    handles: &[Option<NetNs>],
    host: usize,
    parts: &Parts,
    conntrack: bool,
) -> Vec<Result<Raw, String>> {
    let mut raws: Vec<Result<Raw, String>> = (0..handles.len()).map(|_| Ok(Raw::empty())).collect();
    raws[host] = read_inside(host, handles, host, parts, conntrack);
    let mut leads: Vec<usize> = match &raws[host] {
        Ok(r) => r
            .links
            .iter()
            .filter_map(|l| r.nsids.get(&l.link_netnsid?).copied())
            .filter(|&j| j != host)
            .collect(),
        Err(_) => Vec::new(),
    };
    leads.sort_unstable();
    leads.dedup();
    let links_only = Parts {
        links: true,
        ..Parts::NONE
    };
    let read = parallel_map(leads.len(), |k| {
        read_inside(leads[k], handles, host, &links_only, false)
    });
    for (j, r) in leads.into_iter().zip(read) {
        raws[j] = r;
    }
    raws
}

/// The nsids the first pass left unresolved (links whose other end is neither the host nor
/// in the same namespace): asked again inside each such namespace, the likely owners first
/// (a namespace holding a link at the target ifindex whose own IFLA_LINK points back), then
/// every namespace until found.
fn resolve_other_nsids(raws: &mut [Result<Raw, String>], handles: &[Option<NetNs>]) {
    let mut back: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    let mut by_index: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, r) in raws.iter().enumerate() {
        let Ok(r) = r else { continue };
        for l in &r.links {
            by_index.entry(l.index).or_default().push(i);
            if let Some(peer) = l.link {
                back.entry((l.index, peer)).or_default().push(i);
            }
        }
    }
    let found = parallel_map(raws.len(), |i| {
        let Ok(r) = &raws[i] else {
            return HashMap::new();
        };
        let mut wanted: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for l in &r.links {
            let (Some(id), Some(target)) = (l.link_netnsid, l.link) else {
                continue;
            };
            if r.nsids.contains_key(&id) {
                continue;
            }
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
        let (false, Some(me)) = (wanted.is_empty(), &handles[i]) else {
            return HashMap::new();
        };
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
                let mut c = 0;
                while !known.contains_key(id) && c < handles.len() {
                    ask(c, &mut rt, &mut known);
                    c += 1;
                }
            }
            known
        })
        .unwrap_or_default()
    });
    for (r, m) in raws.iter_mut().zip(found) {
        if let Ok(r) = r {
            for (id, j) in m {
                r.nsids.entry(id).or_insert(j);
            }
        }
    }
}

fn label_of(info: &NamespaceInfo) -> (String, Option<String>) {
    let name = info.names.iter().find(|n| !n.contains('/')).cloned();
    // A Docker/Podman container by its engine's name (Podman's /run/netns/netns-UUID says
    // nothing); a lab container by its namespace name, which is what the lab prints.
    let engine_container = info.containers.iter().find(|c| {
        matches!(
            c.engine,
            Some(crate::engine::EngineKind::Docker | crate::engine::EngineKind::Podman)
        ) && c.name.is_some()
    });
    // A pod on a Kubernetes node by `pod:NS/NAME`: its /run/netns name (cni-UUID) says nothing.
    let pod = info
        .containers
        .iter()
        .find_map(|c| match (c.engine, &c.pod) {
            (Some(crate::engine::EngineKind::Kubernetes), Some(p)) => Some(p),
            _ => None,
        });
    let label = match (pod, engine_container, &name) {
        (Some(p), _, _) => format!("pod:{p}"),
        (None, Some(c), _) => format!("container:{}", c.short_name()),
        (None, None, Some(n)) => n.clone(),
        (None, None, None) => info.display_name(),
    };
    (label, name)
}

/// Read the whole machine as `opts.host` sees it (every part: what doctor judges).
pub(crate) fn read(opts: &ReadOptions) -> Result<Snapshot, FactsError> {
    read_with(opts, &Parts::ALL, None)
}

/// Read the `parts` of the machine that a command needs, as `opts.host` sees it. With `whole`
/// (an intent the caller already read, e.g. to open `container:NAME`), containers are named
/// from it and the snapshot keeps all of it; without, each engine is read here and only the
/// engines and containers behind the host are kept (doctor's view).
pub(crate) fn read_with(
    opts: &ReadOptions,
    want: &Parts,
    whole: Option<Intent>,
) -> Result<Snapshot, FactsError> {
    let started = Instant::now();
    let before = counters();
    if want.links {
        raise_nofile_limit();
    }
    // Each engine endpoint read on its own: only the engines whose containers live behind this
    // host count for doctor (a Podman socket of another host namespace publishes its own 8080).
    let mut parts: Vec<Intent> = Vec::new();
    let mut intent = Intent::default();
    let whole_given = whole.is_some();
    if let Some(w) = whole {
        intent = w;
    } else if !opts.skip_docker {
        for ep in docker::endpoints() {
            let mut part = Intent::default();
            docker::read_into(&ep, &mut part);
            part.fill_netns_inodes();
            parts.push(part);
        }
        let mut rest = Intent::default();
        cni::read_into(&crate::netns::host_path(cni::RESULTS_DIR), &mut rest);
        lab::read_into(&mut rest);
        // A Kubernetes node's pods, named by the kubelet's log links.
        kube::read_into(&kube::log_dir(), &mut rest);
        rest.fill_netns_inodes();
        parts.push(rest);
        for p in &parts {
            intent.containers.extend(p.containers.iter().cloned());
            intent.networks.extend(p.networks.iter().cloned());
            intent.sources.extend(p.sources.iter().cloned());
        }
    }
    let mut infos = discover_with(
        DiscoverOptions {
            skip_interfaces: true,
            skip_docker: opts.skip_docker,
        },
        &intent,
    );
    for ns in std::iter::once(&opts.host).chain(&opts.extra) {
        if !infos.iter().any(|i| i.id == ns.id()) {
            infos.push(NamespaceInfo::known_only_by_path(ns));
        }
    }
    let host_id = opts.host.id();
    let host = infos
        .iter()
        .position(|i| i.id == host_id)
        .expect("the host was added above");
    let handles: Vec<Option<NetNs>> = infos
        .iter()
        .map(|i| {
            std::iter::once(&opts.host)
                .chain(&opts.extra)
                .find(|e| e.id() == i.id)
                .cloned()
                .or_else(|| i.open().ok())
        })
        .collect();

    // The host's conntrack is dumped inside the host's own entry when the read enters it.
    let ct_inside = opts.conntrack && want.links;
    let (mut raws, owners, fw, ct) = std::thread::scope(|s| {
        let ct = s.spawn(|| {
            (opts.conntrack && !ct_inside)
                .then(|| conntrack::read(&opts.host))
                .flatten()
        });
        let tools = s.spawn(|| {
            let fw = if want.firewall {
                firewall::dump_with(&opts.host, want.firewall_counters)
            } else {
                FirewallDump::default()
            };
            (fw, ct.join().unwrap_or_default())
        });
        let owners = s.spawn(|| {
            if want.listeners {
                sockets::socket_owners()
            } else {
                HashMap::new()
            }
        });
        let raws = if want.one_namespace {
            read_host_and_its_peers(&handles, host, want, ct_inside)
        } else {
            parallel_map(infos.len(), |i| {
                read_inside(i, &handles, host, want, ct_inside)
            })
        };
        let (fw, ct) = tools.join().unwrap_or_default();
        (raws, owners.join().unwrap_or_default(), fw, ct)
    });
    if want.all_peers {
        resolve_other_nsids(&mut raws, &handles);
    }
    let ct = if ct_inside {
        raws.get_mut(host)
            .and_then(|r| r.as_mut().ok())
            .and_then(|r| r.conntrack.take())
    } else {
        ct
    };

    // nsid maps: from the host's (every namespace) and from each namespace's (the host).
    let mut namespaces: Vec<NsFacts> = Vec::with_capacity(infos.len());
    let ids: Vec<NsId> = infos.iter().map(|i| i.id).collect();
    for (i, (info, raw)) in infos.iter().zip(&raws).enumerate() {
        let (label, name) = label_of(info);
        let label = if i == host && info.current {
            opts.host.label().to_string()
        } else {
            label
        };
        let mut f = NsFacts {
            id: info.id,
            label,
            name,
            path: info.path.display().to_string(),
            current: info.current,
            names: info.names.clone(),
            mounts: info.mounts.clone(),
            nsid: info.nsid,
            kernel_threads: info.kernel_threads,
            processes: info.processes.clone(),
            containers: info.containers.clone(),
            nsids: BTreeMap::new(),
            firewall: None,
            links: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            listeners: Vec::new(),
            connections: Vec::new(),
            sysctls: BTreeMap::new(),
            peers: Vec::new(),
            error: None,
        };
        match raw {
            Err(e) => f.error = Some(e.clone()),
            Ok(r) => {
                f.links = r.links.clone();
                f.addresses = r.addresses.clone();
                f.routes = r.routes.clone();
                f.sysctls = r.sysctls.clone();
                let owned = |socks: &[Socket]| -> Vec<Socket> {
                    socks
                        .iter()
                        .cloned()
                        .map(|mut s| {
                            if let Some(o) = owners.get(&s.inode) {
                                s.owners = o.clone();
                            }
                            s
                        })
                        .collect()
                };
                f.listeners = owned(&r.listeners);
                f.connections = owned(&r.connections);
                f.nsids = r.nsids.iter().map(|(&id, &j)| (id, ids[j])).collect();
                for l in r.links.iter().filter(|l| l.kind == "veth") {
                    let Some(peer_index) = l.link else { continue };
                    let peer_ns = match l.link_netnsid {
                        None => Some(info.id),
                        Some(id) => r.nsids.get(&id).map(|&j| ids[j]),
                    };
                    if let Some(peer_ns) = peer_ns {
                        f.peers.push(Peer {
                            local_index: l.index,
                            peer_ns,
                            peer_index,
                        });
                    }
                }
            }
        }
        namespaces.push(f);
    }
    if let Some(e) = &namespaces[host].error {
        return Err(FactsError::Host {
            ns: opts.host.label().to_string(),
            why: e.clone(),
        });
    }

    // Userland proxies: the owners of the host's listening sockets, by their command lines.
    let mut proxies = Vec::new();
    let mut seen = Vec::new();
    let proxy_homes: Vec<&NsFacts> = match (want.proxies, want.proxies_everywhere) {
        (false, _) => Vec::new(),
        (true, false) => vec![&namespaces[host]],
        (true, true) => namespaces.iter().collect(),
    };
    for s in proxy_homes.iter().flat_map(|n| &n.listeners) {
        for o in &s.owners {
            if seen.contains(&o.pid) {
                continue;
            }
            seen.push(o.pid);
            if let Some(p) =
                proxies::recognise(o.pid, &o.comm, &crate::netns::sockets::cmdline(o.pid))
            {
                proxies.push(p);
            }
        }
    }
    // Rootless Docker's rootlesskit runs in the host even while it publishes nothing (every
    // container stopped): the engine it hosts is this host's.
    if want.proxies {
        for o in namespaces[host].processes.iter() {
            if o.comm == "rootlesskit" && !seen.contains(&o.pid) {
                seen.push(o.pid);
                proxies.extend(proxies::recognise(
                    o.pid,
                    &o.comm,
                    &crate::netns::sockets::cmdline(o.pid),
                ));
            }
        }
    }

    let by_name = |n: &str| -> Option<NsId> {
        infos
            .iter()
            .find(|i| i.names.iter().any(|x| x == n))
            .map(|i| i.id)
    };
    let lab_names = if want.labs {
        lab_state::list()
    } else {
        Vec::new()
    };
    let labs = lab_names
        .into_iter()
        .filter_map(|name| lab_state::load(&name).ok())
        .map(|st| LabFacts {
            name: st.name.clone(),
            host: match &st.host_netns {
                Some(n) => by_name(n),
                None => infos.iter().find(|i| i.current).map(|i| i.id),
            },
            containers: st
                .containers
                .iter()
                .map(|c| LabContainer {
                    name: c.name.clone(),
                    ns: c.netns.as_deref().and_then(by_name),
                    run: c.run.as_deref().map(|r| {
                        let mut argv: Vec<String> =
                            r.split_whitespace().map(String::from).collect();
                        if argv.first().map(String::as_str) == Some("nettool") {
                            argv[0] = self_exe();
                        }
                        argv
                    }),
                })
                .collect(),
        })
        .collect();

    let intent = if whole_given {
        intent
    } else {
        let dirs: Vec<&str> = proxies
            .iter()
            .filter_map(|p| p.rootless.as_ref()?.runtime_dir.as_deref())
            .collect();
        parts.extend(crate::engine::podman::read_runtime_dirs(&dirs, &intent));
        let relayed = proxies::relayed_namespaces(&proxies);
        let hosted = proxies::hosted_engines(&proxies);
        super::relevant::relevant_intent(parts, &namespaces, host_id, &relayed, &hosted)
    };
    let after = counters();
    Ok(Snapshot {
        meta: Meta {
            format: FORMAT,
            nettool: env!("CARGO_PKG_VERSION").into(),
            exe: self_exe(),
            read_ms: started.elapsed().as_millis() as u64,
            reads: Reads {
                namespaces: namespaces.len() as u64,
                netlink_dumps: after.0 - before.0,
                namespace_entries: after.1 - before.1,
                proc_scans: after.2 - before.2,
                tool_runs: after.3 - before.3,
            },
        },
        host: host_id,
        namespaces,
        firewall: fw,
        conntrack: ct,
        proxies,
        labs,
        intent: (whole_given || !opts.skip_docker).then_some(intent),
        question: None,
        probes: Vec::new(),
        relayed_host: None,
    })
}

/// Add the firewall dumps of namespaces `ids` (topology reads the NAT of the namespaces it
/// draws with a bridge): each opened again by its recorded path, checked to be the same one.
/// The host's go to [`Snapshot::firewall`], the others' to their [`NsFacts::firewall`].
pub(crate) fn add_firewalls(snap: &mut Snapshot, ids: &[NsId]) {
    let host = snap.host;
    let runs_before = firewall::TOOL_RUNS.load(Ordering::Relaxed);
    let opened: Vec<(NsId, NetNs)> = ids
        .iter()
        .filter_map(|&id| {
            let n = snap.ns(id)?;
            let ns = NetNs::from_path(std::path::Path::new(&n.path)).ok()?;
            (ns.id() == id).then(|| (id, ns.with_label(&n.label)))
        })
        .collect();
    let dumps = firewall::dump_each(&opened.iter().map(|(_, ns)| ns).collect::<Vec<_>>());
    for ((id, _), d) in opened.into_iter().zip(dumps) {
        if id == host {
            snap.firewall = d;
        } else if let Some(n) = snap.namespaces.iter_mut().find(|n| n.id == id) {
            n.firewall = Some(d);
        }
    }
    snap.meta.reads.tool_runs += firewall::TOOL_RUNS.load(Ordering::Relaxed) - runs_before;
}

/// Raise the soft open-files limit to the hard one: a read keeps one fd per namespace open.
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

/// This executable's path (for fix commands that run nettool itself).
pub(crate) fn self_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nettool".into())
}
