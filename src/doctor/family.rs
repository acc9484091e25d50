//! Dual-stack ports: which address families to follow, and the two paths as one report.
//!
//! A port is followed over IPv6 too when it is published over IPv6 (a DNAT rule for it in
//! the IPv6 rules, or an engine that writes IPv6 NAT publishing it to a container with an
//! IPv6 address) and the source can use IPv6. A client given by address is followed over
//! its address's family only.

use std::net::IpAddr;

use crate::facts::{is_link_local, From, NsFacts, Question, Snapshot};
use crate::nat::model::{Action, Ruleset};

use super::{conclude, engine, rules, Family, FamilyPath, Report, Verdict};

/// The families to follow for the question, IPv4 first.
pub(crate) fn families(snap: &Snapshot, q: &Question, fw: &rules::Firewall) -> Vec<Family> {
    let of = |a: IpAddr| {
        if a.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    };
    if let Some(a) = q.dst.or(q.src) {
        return vec![of(a)];
    }
    if published_over_v6(snap, q, fw) && source_speaks_v6(snap, q) {
        vec![Family::Ipv4, Family::Ipv6]
    } else {
        vec![Family::Ipv4]
    }
}

/// A global (not loopback, not link-local) IPv6 address.
pub(crate) fn global_v6(a: IpAddr) -> bool {
    a.is_ipv6() && !a.is_loopback() && !is_link_local(a)
}

/// True when some table of `rs` named nat holds a rule (an engine writing IPv6 NAT).
fn has_nat(rs: &Ruleset) -> bool {
    rs.tables
        .iter()
        .filter(|t| t.name == "nat")
        .any(|t| t.chains.iter().any(|c| !c.rules.is_empty()))
}

fn published_over_v6(snap: &Snapshot, q: &Question, fw: &rules::Firewall) -> bool {
    let dnat6 = |pred: &dyn Fn(&crate::nat::model::Rule) -> bool| {
        fw.rs6.tables.iter().any(|t| {
            t.chains
                .iter()
                .flat_map(|c| &c.rules)
                .any(|r| matches!(r.action, Action::Dnat { .. }) && pred(r))
        })
    };
    let container = q.container.and_then(|id| snap.ns(id));
    match (q.port, container, &q.container_name) {
        // `doctor container:web`: a DNAT rule in the IPv6 rules to one of its addresses.
        (_, Some(c), _) => {
            let addrs: Vec<IpAddr> = c
                .addresses
                .iter()
                .map(|a| a.address)
                .filter(|a| global_v6(*a))
                .collect();
            !addrs.is_empty()
                && dnat6(&|r| match &r.action {
                    Action::Dnat { to } => to.addr.is_some_and(|a| addrs.contains(&a)),
                    _ => false,
                })
        }
        (Some(port), None, None) if fw.has_dnat_for_port_in(true, q.proto, port) => true,
        _ => {
            // The rule may be the fault: the engine's intent says the port is meant for IPv6.
            let port = if q.container_name.is_some() {
                0
            } else {
                q.port.unwrap_or(0)
            };
            // Published on an address that admits IPv6 (every address, or an IPv6 one:
            // `-p 0.0.0.0:8080:80` is IPv4 only).
            let proto = q.proto.to_string();
            has_nat(&fw.rs6)
                && engine::intended(snap, fw, q, q.proto, port, true).is_some_and(|(c, b)| {
                    b.is_some()
                        && c.attachments.iter().any(|a| a.ipv6.is_some())
                        && c.ports.iter().any(|x| {
                            x.proto == proto
                                && (port == 0 || x.host_port == port)
                                && x.host_ip.is_none_or(|ip| ip.is_ipv6())
                        })
                })
        }
    }
}

/// The veth from `ns` into the host and `ns`'s address of family `v6` on it.
pub(crate) fn into_host<'a>(
    snap: &'a Snapshot,
    ns: &NsFacts,
    v6: bool,
) -> Option<(&'a crate::netns::links::Link, Option<IpAddr>)> {
    let (link, a4) = snap.link_into_host(ns)?;
    if !v6 {
        return Some((link, a4));
    }
    let p = ns.peers.iter().find(|p| p.peer_ns == snap.host)?;
    let a6 = ns
        .addresses
        .iter()
        .find(|a| a.index == p.local_index && global_v6(a.address))
        .map(|a| a.address);
    Some((link, a6))
}

/// The host's global IPv6 address on link `index`.
fn host_v6_on(snap: &Snapshot, index: u32) -> bool {
    snap.host()
        .addresses
        .iter()
        .any(|a| a.index == index && global_v6(a.address))
}

fn source_speaks_v6(snap: &Snapshot, q: &Question) -> bool {
    let host = snap.host();
    match &q.from {
        From::Localhost => true,
        From::Host | From::Outside { client: None } => host.primary_address_of(true).is_some(),
        From::Outside { client: Some(id) } => snap
            .ns(*id)
            .and_then(|c| into_host(snap, c, true))
            .is_some_and(|(l, a)| a.is_some() && host_v6_on(snap, l.index)),
        From::Container { ns } => snap
            .ns(*ns)
            .and_then(|c| into_host(snap, c, true))
            .is_some_and(|(l, a)| {
                let bridge = l.master.unwrap_or(l.index);
                a.is_some() && host_v6_on(snap, bridge)
            }),
    }
}

/// The two paths as one report: the IPv4 hops, then the IPv6 ones (marked), the engine's
/// intent once. A fault the IPv6 path shares with the IPv4 one is that cause again, not a
/// second FAIL: it goes into the IPv4 hop's evidence.
pub(crate) fn merge(mut r4: Report, r6: Report) -> Report {
    let engine4 = r4.hops.iter().find(|h| h.id == "engine").map(|h| h.verdict);
    let mut hops6: Vec<_> = r6
        .hops
        .into_iter()
        .filter(|h| !(h.id == "engine" && Some(h.verdict) == engine4) && h.id != "backends")
        .collect();
    for h in r4
        .hops
        .iter_mut()
        .filter(|h| h.id != "engine" && h.id != "backends")
    {
        h.family = Some(Family::Ipv4);
    }
    for h in &mut hops6 {
        h.family = Some(Family::Ipv6);
        h.title = format!("{} (IPv6)", h.title);
    }
    if let Some(f4) = r4.hops.iter().position(|h| h.verdict == Verdict::Fail) {
        let fault = r4.hops[f4].fault;
        let mut kept = Vec::new();
        for h in hops6 {
            if h.verdict == Verdict::Fail && h.fault == fault {
                r4.hops[f4]
                    .evidence
                    .push(format!("the same over IPv6: {}", h.summary));
            } else {
                kept.push(h);
            }
        }
        hops6 = kept;
    }
    r4.hops.extend(hops6);
    r4.ipv6 = Some(FamilyPath {
        packet: r6.packet,
        destination: r6.destination,
        probe: r6.probe,
    });
    r4.diagnosis = conclude(&r4);
    r4
}
