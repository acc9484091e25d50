//! Veth peers across namespaces: IFLA_LINK + IFLA_LINK_NETNSID resolved with RTM_GETNSID.

use std::collections::HashMap;

use serde::Serialize;

use super::discover::NamespaceInfo;
use super::links::{Link, Rtnl};
use super::rtnl::NetlinkError;
use super::{NetNs, NetnsError, NsId};

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
pub(crate) fn veth_peers(
    ns: &NetNs,
    candidates: &[NamespaceInfo],
) -> Result<Vec<VethPeer>, NetnsError> {
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
