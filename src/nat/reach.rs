//! Representative packets walked through the model. Every sentence of the summary about what
//! reaches what (published ports and who may use them, what is dropped, what is open) comes from
//! one of these walks, so the summary and `--packet` cannot disagree.
//!
//! Reading a file, nothing says what the host looks like: [`HostModel::invent`] makes one up from
//! the rules (addresses no rule mentions, the container networks the rules tie to interfaces)
//! and says so in its assumptions. Live, [`HostModel::from_facts`] uses the namespace's own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use super::model::*;
use super::walk::{self, LocalFacts, Packet, RouteFact, RuleRef, Walk, WalkOptions};

/// A container (or pod) network: a subnet the rules tie to an interface.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    /// The bridge (or other) interface.
    pub iface: String,
    /// Its subnet.
    pub net: IpNet,
}

/// The host the summary walks its packets through.
#[derive(Debug, Clone, Serialize)]
pub struct HostModel {
    /// The interface outside traffic arrives on.
    pub external_iface: String,
    /// This host's address on it (IPv4, IPv6).
    pub host_addrs: Vec<IpAddr>,
    /// A client out there (IPv4, IPv6): an address no rule mentions.
    pub client_addrs: Vec<IpAddr>,
    /// Container networks.
    pub networks: Vec<Network>,
    /// Addresses, routes and forwarding the walks use.
    pub facts: LocalFacts,
    /// True when made up from the rules (a file), false when read from a live namespace.
    pub invented: bool,
    /// No uplink: a live namespace with no default route and no interface outside the container
    /// networks (an isolated lab's host). Nothing arrives from another host, so nothing is walked
    /// "from outside" and `external_iface` / `client_addrs` are only placeholders.
    pub isolated: bool,
    /// What was made up, in words.
    pub assumptions: Vec<String>,
}

/// Every network (not a /0) that any rule tests.
fn nets_in_rules(rs: &Ruleset) -> Vec<IpNet> {
    // A set: kube-proxy dumps name tens of thousands of /32s.
    let mut out: std::collections::BTreeSet<IpNet> = Default::default();
    for r in rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
    {
        for m in &r.matches {
            if let Cond::Addr { net, .. } = &m.cond {
                if net.prefix_len() > 0 {
                    out.insert(*net);
                }
            }
        }
        if let Action::Dnat { to } | Action::Snat { to } = &r.action {
            if let Some(a) = to.addr {
                out.insert(IpNet::from(a));
            }
        }
    }
    out.into_iter().collect()
}

fn free_addr(cands: &[&str], nets: &[IpNet]) -> Option<IpAddr> {
    cands
        .iter()
        .filter_map(|c| c.parse::<IpAddr>().ok())
        .find(|a| !nets.iter().any(|n| n.contains(a)))
}

/// A host address inside `net` that is neither its network address nor its first host
/// (the gateway), `nth` hosts in.
pub(crate) fn host_in(net: &IpNet, nth: u32) -> IpAddr {
    if net.prefix_len() == net.max_prefix_len() {
        return net.addr();
    }
    let span = match net {
        IpNet::V4(n) => 32 - n.prefix_len() as u32,
        IpNet::V6(n) => 128 - n.prefix_len() as u32,
    };
    let size: u128 = if span >= 64 {
        u64::MAX as u128
    } else {
        1u128 << span
    };
    let off = (nth as u128).min(size.saturating_sub(2)).max(1);
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(off as u32))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(off))),
    }
}

/// Container networks: a rule that tests a subnet and one interface ties them together
/// (Docker's `-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`, netavark's, nettool's).
fn infer_networks(rs: &Ruleset) -> Vec<Network> {
    let mut out: Vec<Network> = Vec::new();
    for r in rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
    {
        let mut ifaces: Vec<&str> = Vec::new();
        let mut nets: Vec<IpNet> = Vec::new();
        for m in &r.matches {
            match &m.cond {
                Cond::InIface { name } | Cond::OutIface { name }
                    if !ifaces.contains(&name.as_str()) =>
                {
                    ifaces.push(name)
                }
                Cond::Addr { net, .. }
                    if net.prefix_len() > 0
                        && net.prefix_len() < net.max_prefix_len()
                        && !net.addr().is_loopback() =>
                {
                    nets.push(*net)
                }
                _ => {}
            }
        }
        if let [iface] = ifaces.as_slice() {
            if iface.ends_with('+') || iface.ends_with('*') || *iface == "lo" {
                continue;
            }
            for net in nets {
                if !out.iter().any(|n| n.net == net) {
                    out.push(Network {
                        iface: iface.to_string(),
                        net: net.trunc(),
                    });
                }
            }
        }
    }
    out
}

/// The chains kube-proxy marks connections to masquerade with (iptables, nftables mode).
const KUBE_MASQ_CHAINS: [&str; 2] = ["KUBE-MARK-MASQ", "mark-for-masquerade"];

/// kube-proxy's cluster CIDR (the pod network), from the shapes it writes it in:
/// `! -s CIDR ... -j KUBE-MARK-MASQ` (traffic to a service from outside the pods gets masqueraded),
/// nftables' `ip saddr != CIDR ... jump mark-for-masquerade`, and KUBE-EXT's
/// `-s CIDR -j KUBE-SVC-...` ("pod traffic for ... external destinations").
fn kube_cluster_cidrs(rs: &Ruleset) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for t in &rs.tables {
        for c in &t.chains {
            for r in &c.rules {
                let Some(target) = r.action.target_chain() else {
                    continue;
                };
                let masq = KUBE_MASQ_CHAINS.contains(&target);
                let pod_ext = c.name.starts_with("KUBE-EXT-") && target.starts_with("KUBE-SVC-");
                if !masq && !pod_ext {
                    continue;
                }
                for m in &r.matches {
                    if let Cond::Addr { dir: Dir::Src, net } = &m.cond {
                        let cidr = net.prefix_len() > 0
                            && net.prefix_len() < net.max_prefix_len()
                            && !net.addr().is_loopback();
                        if cidr && m.negated == masq && !out.contains(&net.trunc()) {
                            out.push(net.trunc());
                        }
                    }
                }
            }
        }
    }
    out
}

impl HostModel {
    /// Make a host up from the rules: an external interface and addresses that no rule
    /// mentions, the container networks the rules name, routes to them, forwarding on.
    pub fn invent(rs: &Ruleset) -> HostModel {
        let nets = nets_in_rules(rs);
        let mut networks = infer_networks(rs);
        // kube-proxy names its pod network (cluster CIDR) but not the interface pods are behind.
        let mut pods = Vec::new();
        for net in kube_cluster_cidrs(rs) {
            if networks
                .iter()
                .any(|n| n.net.contains(&net) || net.contains(&n.net.addr()))
            {
                continue;
            }
            let iface = ["cni0", "cni1", "cbr0"]
                .into_iter()
                .find(|i| !networks.iter().any(|n| n.iface == *i))
                .unwrap_or("cni9")
                .to_string();
            pods.push(format!(
                "pod network {net} from kube-proxy's cluster CIDR (its masquerade rules say `! -s {net}`), pods assumed behind {iface} (the rules do not name that interface)"
            ));
            networks.push(Network { iface, net });
        }
        let external_iface = ["eth0", "eth1", "ext0"]
            .into_iter()
            .find(|i| !networks.iter().any(|n| n.iface == *i))
            .unwrap_or("ext0")
            .to_string();
        let host4 = free_addr(
            &[
                "198.51.100.10",
                "203.0.113.10",
                "100.64.10.10",
                "10.254.254.10",
            ],
            &nets,
        )
        .unwrap_or(IpAddr::from([198, 51, 100, 10]));
        let client4 = free_addr(
            &[
                "203.0.113.77",
                "198.51.100.77",
                "100.64.77.77",
                "10.253.77.77",
            ],
            &nets,
        )
        .unwrap_or(IpAddr::from([203, 0, 113, 77]));
        let host6 = free_addr(&["2001:db8:a::10", "2001:db8:ffa::10", "fd9a::10"], &nets)
            .unwrap_or("2001:db8:a::10".parse().expect("literal"));
        let client6 = free_addr(&["2001:db8:c::77", "2001:db8:ffc::77", "fd9c::77"], &nets)
            .unwrap_or("2001:db8:c::77".parse().expect("literal"));
        let mut facts = LocalFacts {
            addrs: vec![
                (host4, external_iface.clone()),
                (host6, external_iface.clone()),
            ],
            routes: Vec::new(),
            forwarding: Some(true),
        };
        for n in &networks {
            facts.addrs.push((host_in(&n.net, 1), n.iface.clone()));
            facts.routes.push(RouteFact {
                net: n.net,
                dev: n.iface.clone(),
                src: Some(host_in(&n.net, 1)),
            });
        }
        for (net, src) in [("0.0.0.0/0", host4), ("::/0", host6)] {
            facts.routes.push(RouteFact {
                net: net.parse().expect("literal"),
                dev: external_iface.clone(),
                src: Some(src),
            });
        }
        let mut assumptions = vec![format!(
            "reading a file: the walks assume a host with {host4} and {host6} on {external_iface} (no rule names them), a client at {client4} / {client6} out there, forwarding on"
        )];
        let from_rules: Vec<String> = networks
            .iter()
            .take(networks.len() - pods.len())
            .map(|n| format!("{} on {}", n.net, n.iface))
            .collect();
        if !from_rules.is_empty() {
            assumptions.push(format!(
                "container networks taken from the rules: {}",
                from_rules.join(", ")
            ));
        }
        assumptions.extend(pods);
        HostModel {
            external_iface,
            host_addrs: vec![host4, host6],
            client_addrs: vec![client4, client6],
            networks,
            facts,
            invented: true,
            isolated: false,
            assumptions,
        }
    }

    /// The host as a live namespace shows it (its default route names the external interface).
    pub fn from_facts(rs: &Ruleset, facts: &LocalFacts) -> HostModel {
        let mut m = HostModel::invent(rs);
        let default = facts.routes.iter().find(|r| r.net.prefix_len() == 0);
        // The uplink: the default route's interface, else an interface with an address that the
        // rules do not name as a container network. A namespace whose every interface is a
        // container bridge (an isolated lab's host) has none: nothing comes "from outside".
        let uplink = default.map(|r| r.dev.clone()).or_else(|| {
            let named = infer_networks(rs);
            facts
                .addrs
                .iter()
                .filter(|(a, i)| !a.is_loopback() && i != "lo" && !is_link_local(a))
                .find(|(_, i)| !named.iter().any(|n| n.iface == *i))
                .map(|(_, i)| i.clone())
        });
        let isolated = uplink.is_none();
        let ext = uplink.unwrap_or(m.external_iface.clone());
        let mut host_addrs = Vec::new();
        for v6 in [false, true] {
            // No uplink: this host's own address is one on a container network's bridge.
            let a = facts
                .addrs
                .iter()
                .find(|(a, i)| {
                    (isolated || *i == ext)
                        && a.is_ipv6() == v6
                        && !a.is_loopback()
                        && !is_link_local(a)
                })
                .map(|(a, _)| *a)
                .unwrap_or(m.host_addrs[v6 as usize]);
            host_addrs.push(a);
        }
        let networks: Vec<Network> = facts
            .routes
            .iter()
            .filter(|r| r.net.prefix_len() > 0 && r.dev != ext && r.dev != "lo")
            .filter(|r| !is_link_local(&r.net.addr()))
            .map(|r| Network {
                iface: r.dev.clone(),
                net: r.net,
            })
            .collect();
        let mut facts = facts.clone();
        if facts.forwarding.is_none() {
            facts.forwarding = Some(true);
        }
        // Without a default route the client would be unroutable: send it out the external side
        // (not when there is none: then outside is really unroutable).
        for (net, v6) in [("0.0.0.0/0", false), ("::/0", true)] {
            if !isolated
                && !facts
                    .routes
                    .iter()
                    .any(|r| r.net.prefix_len() == 0 && r.net.addr().is_ipv6() == v6)
            {
                facts.routes.push(RouteFact {
                    net: net.parse().expect("literal"),
                    dev: ext.clone(),
                    src: Some(host_addrs[v6 as usize]),
                });
            }
        }
        m.assumptions = vec![if isolated {
            format!(
                "live: the walks use this namespace's addresses and routes; it has no uplink (no default route, and every interface with an address is a container network: {}), so no packet is walked as arriving from another host",
                networks
                    .iter()
                    .map(|n| n.iface.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "live: the walks use this namespace's addresses and routes; outside traffic arrives on {ext} from {} / {}",
                m.client_addrs[0], m.client_addrs[1]
            )
        }];
        m.external_iface = ext;
        m.host_addrs = host_addrs;
        m.networks = networks;
        m.facts = facts;
        m.invented = false;
        m.isolated = isolated;
        m
    }

    fn host(&self, v6: bool) -> IpAddr {
        self.host_addrs[v6 as usize]
    }

    fn client(&self, v6: bool) -> IpAddr {
        self.client_addrs[v6 as usize]
    }

    /// The first network on `iface` of the family.
    fn network_on(&self, iface: &str, v6: bool) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| iface_matches(iface, &n.iface) && n.net.addr().is_ipv6() == v6)
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Where a probe comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum From {
    /// Arriving on the external interface from a client out there.
    Outside,
    /// Arriving from a container on this network interface.
    Container {
        /// The bridge.
        iface: String,
    },
    /// Generated on this host.
    ThisHost,
    /// Arriving as the rule's own conditions say (interface, source).
    AsTheRuleSays,
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Outside => write!(f, "from outside"),
            From::Container { iface } => write!(f, "from a container on {iface}"),
            From::ThisHost => write!(f, "from this host"),
            From::AsTheRuleSays => write!(f, "as the rule's conditions say"),
        }
    }
}

/// One representative packet and what the walk did with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// Where it comes from.
    pub from: From,
    /// The packet walked.
    pub packet: Packet,
    /// accepted-local, forwarded, sent, dropped, rejected, no-route (the walk's verdict).
    pub verdict: String,
    /// The walk's verdict in words.
    pub summary: String,
    /// The DNAT/REDIRECT rule that rewrote it.
    pub dnat_by: Option<RuleRef>,
    /// The SNAT/MASQUERADE rule that rewrote it.
    pub snat_by: Option<RuleRef>,
    /// The rule or policy that dropped it.
    pub decided_by: Option<RuleRef>,
    /// The ACCEPT rules it met, in order.
    pub accepted_by: Vec<RuleRef>,
    /// DNAT rules a load-balancing point of this walk sends the other branches to.
    pub branch_dnats: Vec<RuleRef>,
    /// The final tuple.
    pub final_tuple: String,
    /// The final destination address.
    pub final_dst: IpAddr,
    /// The final destination port.
    pub final_dport: Option<u16>,
}

/// Walk `p` with the model's facts (first branch), keeping what the summary needs.
pub(crate) fn probe(rs: &Ruleset, model: &HostModel, from: From, p: Packet) -> Probe {
    // Quiet: no step words. The summary walks thousands of packets and keeps only this.
    let opts = WalkOptions {
        quiet: true,
        ..WalkOptions::default()
    };
    let w: Walk = walk::walk_with(rs, &p, &model.facts, &opts);
    probe_of(from, p, &w)
}

/// What the summary keeps of the walk `w` of `p`.
pub(crate) fn probe_of(from: From, p: Packet, w: &Walk) -> Probe {
    Probe {
        from,
        accepted_by: w.accepted_by.clone(),
        packet: p,
        verdict: w.verdict.clone(),
        summary: w.summary.clone(),
        dnat_by: w.dnat_by.clone(),
        snat_by: w.snat_by.clone(),
        decided_by: w.decided_by.clone(),
        branch_dnats: w.branch_dnats.clone(),
        final_tuple: w.final_tuple.clone(),
        final_dst: w.final_packet.dst,
        final_dport: w.final_packet.dport,
    }
}

fn num_proto(p: &str) -> String {
    match p {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "132" => "sctp".into(),
        "1" => "icmp".into(),
        "58" | "ipv6-icmp" => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// A packet that meets `conds`: positive conditions set fields, and every value is picked so that
/// no negated condition holds (`! --dport 80`, `! -s 10.0.0.5`, `! -p udp`), so an earlier
/// exception steered away from with a negated condition really is avoided. The first element of
/// an evaluated set counts as positive conditions. Entering at `hook`; `v6` picks the family when
/// no address condition does. Best effort: the walk of the packet is the judge.
pub(crate) fn satisfy(conds: &[&Match], hook: Hook, model: &HostModel, v6: bool) -> Packet {
    // A set lookup stands for its first element's conditions.
    let is_set = |m: &Match| {
        !m.negated
            && matches!(
                m.cond,
                Cond::NftSet {
                    elements: Some(_),
                    ..
                }
            )
    };
    let set_first: Vec<Match> = conds
        .iter()
        .filter(|m| is_set(m))
        .filter_map(|m| match &m.cond {
            Cond::NftSet {
                elements: Some(els),
                ..
            } => els.first(),
            _ => None,
        })
        .flatten()
        .map(|c| Match {
            negated: false,
            cond: c.clone(),
        })
        .collect();
    let flat: Vec<&Match> = conds
        .iter()
        .copied()
        .filter(|m| !is_set(m))
        .chain(set_first.iter())
        .collect();
    let positive: Vec<&Cond> = flat
        .iter()
        .filter(|m| !m.negated)
        .map(|m| &m.cond)
        .collect();
    let neg: Vec<&Cond> = flat.iter().filter(|m| m.negated).map(|m| &m.cond).collect();
    // Family: from any address condition.
    let v6 = flat
        .iter()
        .find_map(|m| match &m.cond {
            Cond::Addr { net, .. } => Some(net.addr().is_ipv6()),
            Cond::AddrRange { from, .. } => Some(from.is_ipv6()),
            _ => None,
        })
        .unwrap_or(v6);
    let proto_ok = |p: &str| {
        !neg.iter()
            .any(|c| matches!(c, Cond::Proto { proto } if walk::proto_is(proto, p)))
    };
    let named_proto = positive.iter().rev().find_map(|c| match c {
        Cond::Proto { proto } if proto != "all" && proto != "0" => Some(num_proto(proto)),
        _ => None,
    });
    let proto = named_proto.unwrap_or_else(|| {
        ["tcp", "udp", "sctp", "icmp"]
            .into_iter()
            .find(|p| proto_ok(p))
            .unwrap_or("tcp")
            .to_string()
    });
    let proto = if proto == "icmp" && v6 {
        "icmpv6".to_string()
    } else {
        proto
    };
    let ported = matches!(proto.as_str(), "tcp" | "udp" | "sctp");
    // An address meets every positive and no negated condition of its direction.
    let addr_ok = |dir: Dir, a: &IpAddr| {
        let inside = |c: &&Cond| match c {
            Cond::Addr { dir: d, net } if *d == dir => Some(net.contains(a)),
            Cond::AddrRange { dir: d, from, to } if *d == dir => Some(from <= a && a <= to),
            _ => None,
        };
        positive.iter().filter_map(&inside).all(|x| x) && !neg.iter().filter_map(&inside).any(|x| x)
    };
    let addr_for = |dir: Dir| -> Option<IpAddr> {
        let mut cands: Vec<IpAddr> = Vec::new();
        for c in &positive {
            match c {
                Cond::Addr { dir: d, net } if *d == dir => {
                    cands.extend([2, 3, 200, 100, 10, 1000].map(|n| host_in(net, n)))
                }
                Cond::AddrRange { dir: d, from, to } if *d == dir => cands.extend([*from, *to]),
                _ => {}
            }
        }
        let first = cands.first().copied()?;
        Some(cands.into_iter().find(|a| addr_ok(dir, a)).unwrap_or(first))
    };
    let from_host = hook == Hook::Output;
    let out_iface = positive.iter().find_map(|c| match c {
        Cond::OutIface { name } => Some(name.clone()),
        _ => None,
    });
    let out_bad = |i: &str| {
        neg.iter()
            .any(|c| matches!(c, Cond::OutIface { name } if iface_matches(name, i)))
    };
    let dst = addr_for(Dir::Dst)
        .or_else(|| {
            // Leaving by a container network: a container on it.
            let o = out_iface.as_deref()?;
            model.network_on(o, v6).map(|n| host_in(&n.net, 2))
        })
        .or_else(|| {
            // Forwarded traffic goes through this host to somewhere else: a container on a
            // network it may leave by, else an address out there.
            if !matches!(hook, Hook::Forward | Hook::Postrouting) || from_host {
                return None;
            }
            model
                .networks
                .iter()
                .filter(|n| n.net.addr().is_ipv6() == v6 && !out_bad(&n.iface))
                .map(|n| host_in(&n.net, 2))
                // Another host out there than the client the packet may come from.
                .chain(std::iter::once(bump(model.client(v6))))
                .find(|a| addr_ok(Dir::Dst, a))
        })
        .unwrap_or_else(|| model.host(v6));
    let in_bad = |i: &str| {
        neg.iter()
            .any(|c| matches!(c, Cond::InIface { name } if iface_matches(name, i)))
    };
    let in_iface = if from_host {
        None
    } else {
        let named = positive.iter().find_map(|c| match c {
            Cond::InIface { name } => Some(name.replace(['+', '*'], "0")),
            _ => None,
        });
        Some(named.unwrap_or_else(|| {
            let first = match model.isolated {
                // No uplink: traffic arrives from a container network.
                true => model
                    .networks
                    .iter()
                    .map(|n| n.iface.as_str())
                    .find(|i| !in_bad(i))
                    .unwrap_or(model.external_iface.as_str()),
                false => model.external_iface.as_str(),
            };
            [first, "eth9", "ext9"]
                .into_iter()
                .find(|i| !in_bad(i))
                .unwrap_or("ext9")
                .to_string()
        }))
    };
    let src = addr_for(Dir::Src).unwrap_or_else(|| {
        let usual = if from_host {
            model.host(v6)
        } else {
            match in_iface.as_deref().and_then(|i| model.network_on(i, v6)) {
                Some(n) => host_in(&n.net, 200),
                None => model.client(v6),
            }
        };
        // Steer away from a negated source (`! -s CLIENT`): another host on the same side.
        let others = match in_iface.as_deref().and_then(|i| model.network_on(i, v6)) {
            Some(n) => vec![host_in(&n.net, 201), host_in(&n.net, 150)],
            None => vec![bump(model.client(v6)), bump(bump(model.client(v6)))],
        };
        std::iter::once(usual)
            .chain(others)
            .find(|a| addr_ok(Dir::Src, a))
            .unwrap_or(usual)
    });
    // A port meets every positive and no negated condition of its direction.
    let port_for = |dir: Dir, usual: &[u16]| -> u16 {
        let ranges = |c: &&Cond| match c {
            Cond::Port { dir: d, ports } if *d == dir => Some(ports.clone()),
            _ => None,
        };
        let pos: Vec<Vec<PortRange>> = positive.iter().filter_map(&ranges).collect();
        let negs: Vec<Vec<PortRange>> = neg.iter().filter_map(&ranges).collect();
        let ok = |p: u16| {
            pos.iter().all(|rs| rs.iter().any(|r| r.contains(p)))
                && !negs.iter().any(|rs| rs.iter().any(|r| r.contains(p)))
        };
        let mut cands: Vec<u16> = Vec::new();
        for r in pos.iter().flatten() {
            cands.extend([
                r.from,
                r.from.saturating_add(1),
                r.to,
                r.from / 2 + r.to / 2,
            ]);
        }
        let first = cands.first().copied();
        cands.extend(usual);
        // Right after each excluded range: the first port a negated range leaves.
        for r in negs.iter().flatten() {
            cands.push(r.to.saturating_add(1));
        }
        cands
            .into_iter()
            .find(|p| ok(*p))
            .or(first)
            .unwrap_or(usual[usual.len() - 1])
    };
    let dport = ported.then(|| port_for(Dir::Dst, &[80, 8081, 65001]));
    let sport = ported.then(|| port_for(Dir::Src, &[40000, 40001, 50000]));
    let mut mark = 0u32;
    for c in &positive {
        if let Cond::Mark { value, mask } = c {
            mark = (mark & !mask) | (value & mask);
        }
    }
    // `! --mark V/M` that holds: flip the masked bits (best effort; the walk judges).
    for c in &neg {
        if let Cond::Mark { value, mask } = c {
            if mark & mask == *value && *mask != 0 {
                mark ^= mask;
            }
        }
    }
    let state = positive
        .iter()
        .find_map(|c| match c {
            Cond::CtState { states } if !states.iter().any(|s| s == "NEW") => states
                .iter()
                .find(|s| {
                    matches!(
                        s.as_str(),
                        "ESTABLISHED" | "RELATED" | "INVALID" | "UNTRACKED"
                    )
                })
                .cloned(),
            _ => None,
        })
        .unwrap_or_else(|| "NEW".into());
    Packet {
        proto,
        src,
        sport,
        dst,
        dport,
        in_iface,
        out_iface: None,
        mark,
        state,
        from_host,
    }
}

/// The next address after `a`.
fn bump(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v).wrapping_add(1))),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v).wrapping_add(1))),
    }
}

/// The probes for a path into a rule at `hook`: as the conditions say; then from outside, from
/// each container network and (OUTPUT) from this host to its own and the loopback address.
pub(crate) fn probes_for(
    rs: &Ruleset,
    model: &HostModel,
    conds: &[&Match],
    hook: Hook,
    v6: bool,
) -> Vec<Probe> {
    let base = satisfy(conds, hook, model, v6);
    let v6 = base.dst.is_ipv6();
    let mut packets: Vec<(From, Packet)> = Vec::new();
    let src_given = conds
        .iter()
        .any(|m| !m.negated && matches!(m.cond, Cond::Addr { dir: Dir::Src, .. }));
    let in_given = conds
        .iter()
        .any(|m| !m.negated && matches!(m.cond, Cond::InIface { .. }));
    if hook == Hook::Output {
        packets.push((From::ThisHost, base.clone()));
        let to_host = conds
            .iter()
            .all(|m| !matches!(m.cond, Cond::Addr { dir: Dir::Dst, .. }) || m.negated);
        if to_host {
            let mut lo = base.clone();
            lo.dst = if v6 {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::from([127, 0, 0, 1])
            };
            lo.src = lo.dst;
            packets.push((From::ThisHost, lo));
        }
    } else {
        if src_given || in_given {
            packets.push((From::AsTheRuleSays, base.clone()));
        }
        if !model.isolated {
            let mut out = base.clone();
            out.in_iface = Some(model.external_iface.clone());
            if !src_given {
                out.src = model.client(v6);
            }
            packets.push((From::Outside, out));
        }
        for n in model
            .networks
            .iter()
            .filter(|n| n.net.addr().is_ipv6() == v6)
        {
            let mut c = base.clone();
            c.in_iface = Some(n.iface.clone());
            c.src = host_in(&n.net, 200);
            let from = From::Container {
                iface: n.iface.clone(),
            };
            if !packets.iter().any(|(f, _)| *f == from) {
                packets.push((from, c));
            }
        }
    }
    let mut seen: Vec<Packet> = Vec::new();
    let mut out = Vec::new();
    for (from, p) in packets {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p.clone());
        out.push(probe(rs, model, from, p));
    }
    out
}

/// The probe's fate relative to the DNAT rule `target`, in words.
pub(crate) fn fate(p: &Probe, target: &RuleRef, target_text: &str) -> String {
    let who = match &p.from {
        From::Outside => format!(
            "from outside ({} arriving on {})",
            p.packet.src,
            p.packet.in_iface.as_deref().unwrap_or("?")
        ),
        From::Container { iface } => format!("from a container on {iface}"),
        From::ThisHost => format!("from this host to {}", p.packet.dst),
        From::AsTheRuleSays => format!(
            "from {}{}",
            p.packet.src,
            p.packet
                .in_iface
                .as_deref()
                .map(|i| format!(" arriving on {i}"))
                .unwrap_or_default()
        ),
    };
    let end = match (p.verdict.as_str(), &p.decided_by) {
        ("dropped" | "rejected", Some(d)) => format!("{} by {d}", p.verdict),
        (v, _) => v.to_string(),
    };
    let what = match &p.dnat_by {
        Some(r) if r == target => {
            if matches!(p.verdict.as_str(), "dropped" | "rejected") {
                format!("translated to {target_text}, then {end}")
            } else {
                format!("reaches {target_text} ({})", p.summary)
            }
        }
        Some(r) if p.branch_dnats.contains(target) => {
            format!("reaches {target_text} on some connections (load-balanced; this walk took {r})")
        }
        Some(r) => format!("sent elsewhere by {r} (to {})", p.final_tuple),
        None => match p.verdict.as_str() {
            "dropped" | "rejected" => format!("{end} before any translation"),
            "accepted-local" => format!(
                "not translated: delivered to this host (to a socket on {}, if one listens there: e.g. a userland proxy)",
                p.packet.dst
            ),
            _ => format!("not translated ({})", p.summary),
        },
    };
    format!("{who}: {what}")
}

/// Does this probe reach the DNAT rule `target` (itself or through a load-balancing branch)?
pub(crate) fn reaches(p: &Probe, target: &RuleRef) -> bool {
    p.dnat_by.as_ref() == Some(target) || p.branch_dnats.contains(target)
}
