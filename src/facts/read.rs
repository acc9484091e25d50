//! The live read: every namespace entered once (links, addresses, routes, listening sockets,
//! sysctls and the nsids that join veths, in one thread per namespace), one /proc scan for
//! socket owners, the host's firewall and conntrack dumped by their tools in parallel.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::engine::{cni, docker, lab, Intent};
use crate::lab::state as lab_state;
use crate::netns::discover::{discover_with, DiscoverOptions, NamespaceInfo};
use crate::netns::links::{Address, Link, Route, Rtnl};
use crate::netns::peers::parallel_map;
use crate::netns::rtnl::NetlinkError;
use crate::netns::sockets::{self, Socket, Which};
use crate::netns::{sysctl, NetNs, NsId};

use super::{
    conntrack, firewall, proxies, FactsError, LabContainer, LabFacts, Meta, NsFacts, Peer, Reads,
    Snapshot, FORMAT,
};

/// What to read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The namespace acting as the host (its firewall, conntrack and proxies are read).
    pub host: NetNs,
    /// Namespaces to include even when discovery does not see them (held only by an fd).
    pub extra: Vec<NetNs>,
    /// Do not ask the Docker API for container names.
    pub skip_docker: bool,
    /// Dump UDP conntrack (doctor needs it for UDP questions only: two tool runs saved).
    pub conntrack: bool,
}

/// What one namespace thread brings back.
struct Raw {
    links: Vec<Link>,
    addresses: Vec<Address>,
    routes: Vec<Route>,
    listeners: Vec<Socket>,
    sysctls: BTreeMap<String, String>,
    /// nsid (as this namespace numbers them) -> index of that namespace in the read.
    nsids: HashMap<i32, usize>,
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
/// the others only the host's (their veths lead there).
fn read_inside(i: usize, handles: &[Option<NetNs>], host: usize) -> Result<Raw, String> {
    let Some(ns) = &handles[i] else {
        return Err("could not be opened (it went away)".into());
    };
    ns.run(|| -> Result<Raw, NetlinkError> {
        let mut r = Rtnl::open()?;
        let links = r.links()?;
        let addresses = r.addresses()?;
        let routes = r.routes(false)?;
        let listeners = sockets::list_unowned(Which::Listening)?;
        let mut sysctls = BTreeMap::new();
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
            sysctls,
            nsids,
        })
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
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
    let label = match (engine_container, &name) {
        (Some(c), _) => format!("container:{}", c.short_name()),
        (None, Some(n)) => n.clone(),
        (None, None) => info.display_name(),
    };
    (label, name)
}

/// Read the whole machine as `opts.host` sees it.
pub fn read(opts: &ReadOptions) -> Result<Snapshot, FactsError> {
    let started = Instant::now();
    let before = counters();
    // Each engine endpoint read on its own: only the engines whose containers live behind this
    // host count for doctor (a Podman socket of another host namespace publishes its own 8080).
    let mut parts: Vec<Intent> = Vec::new();
    let mut intent = Intent::default();
    if !opts.skip_docker {
        for ep in docker::endpoints() {
            let mut part = Intent::default();
            docker::read_into(&ep, &mut part);
            part.fill_netns_inodes();
            parts.push(part);
        }
        let mut rest = Intent::default();
        cni::read_into(std::path::Path::new(cni::RESULTS_DIR), &mut rest);
        lab::read_into(&mut rest);
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

    let (raws, owners, fw, ct) = std::thread::scope(|s| {
        let ct = s.spawn(|| {
            opts.conntrack
                .then(|| conntrack::read(&opts.host))
                .flatten()
        });
        let tools = s.spawn(|| {
            let fw = firewall::dump(&opts.host);
            (fw, ct.join().unwrap_or_default())
        });
        let owners = s.spawn(sockets::socket_owners);
        let raws = parallel_map(infos.len(), |i| read_inside(i, &handles, host));
        let (fw, ct) = tools.join().unwrap_or_default();
        (raws, owners.join().unwrap_or_default(), fw, ct)
    });

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
            processes: info.processes.clone(),
            containers: info.containers.clone(),
            links: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            listeners: Vec::new(),
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
                f.listeners = r
                    .listeners
                    .iter()
                    .cloned()
                    .map(|mut s| {
                        if let Some(o) = owners.get(&s.inode) {
                            s.owners = o.clone();
                        }
                        s
                    })
                    .collect();
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
    for s in &namespaces[host].listeners {
        for o in &s.owners {
            if seen.contains(&o.pid) {
                continue;
            }
            seen.push(o.pid);
            if let Some(p) = proxies::recognise(o.pid, &o.comm, &proxies::cmdline(o.pid)) {
                proxies.push(p);
            }
        }
    }

    let by_name = |n: &str| -> Option<NsId> {
        infos
            .iter()
            .find(|i| i.names.iter().any(|x| x == n))
            .map(|i| i.id)
    };
    let labs = lab_state::list()
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

    let intent = relevant_intent(parts, &namespaces, host_id);
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
        intent: (!opts.skip_docker).then_some(intent),
        question: None,
        probes: Vec::new(),
    })
}

/// This executable's path (for fix commands that run nettool itself).
pub fn self_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nettool".into())
}

/// The engines that run this host's containers, and of those only the containers behind this
/// host: an endpoint counts when one of its containers' namespaces has a veth into the host,
/// or one of its networks' bridges is in the host with an address in that network's subnet
/// (its containers may all be stopped or detached). A shared engine (one Podman for several
/// host namespaces) keeps only what is ours: a running container whose veths lead elsewhere
/// is not, nor a stopped one whose networks' bridges are elsewhere.
fn relevant_intent(parts: Vec<Intent>, namespaces: &[NsFacts], host: NsId) -> Intent {
    let Some(h) = namespaces.iter().find(|n| n.id == host) else {
        return Intent::default();
    };
    let peers_of = |inode: u64| -> Option<Vec<NsId>> {
        namespaces.iter().find(|n| n.id.inode == inode).map(|n| {
            n.peers
                .iter()
                .map(|p| p.peer_ns)
                .filter(|p| *p != n.id)
                .collect()
        })
    };
    let bridge_here = |n: &crate::engine::Network| {
        let Some(br) = n.bridge.as_deref() else {
            return false;
        };
        h.links.iter().any(|l| {
            l.name == br
                && h.addresses
                    .iter()
                    .any(|a| a.index == l.index && n.subnets.iter().any(|s| s.contains(&a.address)))
        })
    };
    // A bridge of that network with an address in its subnet, in any namespace at all
    // (Podman removes a network's bridge when its last container stops).
    let bridge_anywhere = |n: &crate::engine::Network| {
        let Some(br) = n.bridge.as_deref() else {
            return false;
        };
        // Carrying traffic only: netavark can leave a bridge with no ports behind when a
        // teardown fails (its operstate is down).
        namespaces.iter().any(|ns| {
            ns.links.iter().any(|l| {
                l.name == br
                    && l.admin_up
                    && l.oper_state != "down"
                    && ns.addresses.iter().any(|a| {
                        a.index == l.index && n.subnets.iter().any(|s| s.contains(&a.address))
                    })
            })
        })
    };
    let mut out = Intent::default();
    for p in parts {
        let ours = |c: &crate::engine::Container| -> bool {
            if let Some(i) = c.netns_inode {
                return i == host.inode
                    || peers_of(i).is_some_and(|ps| ps.is_empty() || ps.contains(&host));
            }
            let names: Vec<&str> = c
                .attachments
                .iter()
                .map(|a| a.network.as_str())
                .chain(std::iter::once(match c.network_mode.as_str() {
                    "default" => "bridge",
                    m => m,
                }))
                .collect();
            let known: Vec<&crate::engine::Network> = p
                .networks
                .iter()
                .filter(|n| names.contains(&n.name.as_str()))
                .collect();
            // Stopped: ours when its networks' bridges are here, or nowhere (it would start
            // wherever its engine runs; nothing says that is another host).
            known.is_empty()
                || known.iter().any(|n| bridge_here(n))
                || known.iter().all(|n| !bridge_anywhere(n))
        };
        let relevant = p
            .containers
            .iter()
            .filter_map(|c| c.netns_inode)
            .any(|i| peers_of(i).is_some_and(|ps| ps.contains(&host)))
            || p.networks.iter().any(bridge_here)
            || h.current
            || p.containers
                .iter()
                .any(|c| c.netns_inode.is_none() && ours(c));
        out.sources.extend(p.sources.iter().cloned());
        if relevant {
            out.containers
                .extend(p.containers.iter().filter(|c| ours(c)).cloned());
            out.networks
                .extend(p.networks.iter().filter(|n| bridge_here(n)).cloned());
        }
    }
    out
}
