//! Which engines and containers are behind the host doctor examines: each engine endpoint is
//! read on its own, and only those whose containers live behind this host count (a Podman
//! socket of another host namespace publishes its own 8080).

use crate::engine::Intent;
use crate::netns::NsId;

use super::NsFacts;

/// The engines that run this host's containers, and of those only the containers behind this
/// host: an endpoint counts when one of its containers' namespaces has a veth into the host,
/// or one of its networks' bridges is in the host with an address in that network's subnet
/// (its containers may all be stopped or detached). A shared engine (one Podman for several
/// host namespaces) keeps only what is ours: a running container whose veths lead elsewhere
/// is not, nor a stopped one whose networks' bridges are elsewhere.
/// `relayed`: the container namespaces the host's rootlessport processes relay into (a
/// rootless container has no veth to the host). `hosted`: the API sockets of the rootless
/// dockerds the host's rootlesskit processes run: all their containers are this host's.
pub(super) fn relevant_intent(
    parts: Vec<Intent>,
    namespaces: &[NsFacts],
    host: NsId,
    relayed: &[u64],
    hosted: &[String],
) -> Intent {
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
    // Podman's conmon holds a published port in the host it publishes on: a container whose
    // port conmon reserves here is this host's, even with no veth or bridge left (disconnected
    // from its only network, whose bridge netavark then removed).
    let reserved_here = |c: &crate::engine::Container| {
        c.ports.iter().any(|b| {
            h.listeners.iter().any(|s| {
                s.local.port() == b.host_port
                    && s.proto.to_string() == b.proto
                    && s.owners.iter().any(|o| o.comm == "conmon")
            })
        })
    };
    let mut out = Intent::default();
    for p in parts {
        let hosted_here = p.sources.iter().any(|s| hosted.contains(&s.endpoint));
        let ours = |c: &crate::engine::Container| -> bool {
            if hosted_here {
                return true;
            }
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
        let relevant = hosted_here
            || p.containers
                .iter()
                .filter_map(|c| c.netns_inode)
                .any(|i| peers_of(i).is_some_and(|ps| ps.contains(&host)))
            || p.networks.iter().any(bridge_here)
            || h.current
            || p.containers.iter().any(&reserved_here)
            || p.containers
                .iter()
                .any(|c| c.netns_inode.is_some_and(|i| relayed.contains(&i)))
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
