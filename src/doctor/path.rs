//! Hops 2..: the kernel switches (ip_forward, route_localnet, rp_filter, br_netfilter), the
//! filter rules, and the route toward the rewritten destination; then the target's hops.

use std::net::IpAddr;

use crate::facts::{From, NsFacts, Question, Snapshot};
use crate::nat::walk::Walk;
use crate::netns::links::Address;
use crate::netns::sockets::Proto;

use super::fix::Fixer;
use super::target::{find_target, return_route_hop, service_hop, veth_hops};
use super::{rules, Destination, Fault, Hop, Packet};

/// What every check of the path reads.
pub(crate) struct PathCtx<'a> {
    pub(crate) q: &'a Question,
    pub(crate) snap: &'a Snapshot,
    pub(crate) host: &'a NsFacts,
    pub(crate) fw: &'a rules::Firewall,
    pub(crate) walk: Option<&'a Walk>,
    pub(crate) packet: &'a Packet,
    pub(crate) fixer: &'a Fixer,
    pub(crate) forwarded: bool,
}

/// Hops 2..: kernel switches, firewall, route, bridge, veth, target, service, conntrack.
pub(crate) fn path_checks(cx: &PathCtx, dest: &mut Destination, hops: &mut Vec<Hop>) {
    let host = cx.host;
    let packet = cx.packet;
    // The route to the rewritten destination (as the host itself sees it).
    let route = host.route_to(dest.addr);

    // Kernel switches (IPv6 forwarding is its own; rp_filter and route_localnet are IPv4's).
    let v6 = dest.addr.is_ipv6();
    if cx.forwarded {
        let name = if v6 {
            "net.ipv6.conf.all.forwarding"
        } else {
            "net.ipv4.ip_forward"
        };
        let v = host.sysctl(name);
        if v == Some("1") {
            hops.push(interface_forwarding_hop(cx, &route, dest.addr, name));
        } else {
            hops.push(
                Hop::fail(
                    "ip_forward",
                    "ip_forward",
                    Fault::IpForwardOff,
                    format!(
                        "{name} = {}: the host does not forward the DNATed packet to {}",
                        v.unwrap_or("?"),
                        dest.addr
                    ),
                )
                .with_fix(Some(cx.fixer.fix_owned(
                    "turn forwarding on",
                    vec!["sysctl".into(), "-w".into(), format!("{name}=1")],
                    false,
                ))),
            );
        }
        if let (Some(iif), false) = (&packet.iif, v6) {
            hops.push(rp_filter_hop(cx, iif));
        }
    }
    let out_if = route
        .as_ref()
        .ok()
        .and_then(|r| r.oif)
        .and_then(|i| host.link(i));
    if dest.via == "dnat" && packet.hook == "output" && packet.dst.is_loopback() && !v6 {
        // A localhost connection rewritten to a container leaves with source 127.0.0.1:
        // the kernel drops it as martian unless route_localnet is on for the output interface.
        let dev = out_if
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "all".into());
        let all = host.sysctl("net.ipv4.conf.all.route_localnet");
        let on_dev = host.sysctl(&format!("net.ipv4.conf.{dev}.route_localnet"));
        let on = all == Some("1") || on_dev == Some("1");
        let evidence = format!(
            "net.ipv4.conf.all.route_localnet = {}, net.ipv4.conf.{dev}.route_localnet = {}",
            all.unwrap_or("?"),
            on_dev.unwrap_or("?")
        );
        if on {
            hops.push(
                Hop::ok("route_localnet", "route_localnet", format!("on for {dev}"))
                    .with_evidence(evidence),
            );
        } else {
            hops.push(
                Hop::fail(
                    "route_localnet",
                    "route_localnet",
                    Fault::RouteLocalnetOff,
                    format!(
                        "127.0.0.1:{} is DNATed to {} but route_localnet is off on {dev}: the kernel drops packets from 127.0.0.1 leaving {dev}",
                        packet.dport, dest.addr
                    ),
                )
                .with_evidence(evidence)
                .with_fix(Some(cx.fixer.fix_owned(
                    &format!("let 127.0.0.1 be routed out of {dev}"),
                    vec![
                        "sysctl".into(),
                        "-w".into(),
                        format!("net.ipv4.conf.{dev}.route_localnet=1"),
                    ],
                    false,
                ))),
            );
        }
    }

    // A container reaching a published port of a neighbour on its own bridge: the DNATed
    // packet is routed back out of the bridge, but the answer is bridged straight to the
    // client, which drops it (wrong source) unless br_netfilter un-NATs bridged traffic.
    if let (From::Container { .. }, true, Some(br)) = (&cx.q.from, cx.forwarded, out_if) {
        if packet.iif.as_deref() == Some(br.name.as_str()) && br.kind == "bridge" {
            hops.push(br_netfilter_hop(cx, &br.name));
        }
    }

    // Firewall: the filter hooks the packet crosses.
    if let Some(w) = cx.walk {
        hops.extend(rules::firewall_hops(
            cx.fw,
            w,
            cx.forwarded,
            cx.fixer,
            &cx.host.listeners,
        ));
    }

    // rootlessport accepts on the host (the filter hooks above judged that) and its child
    // dials the container inside its namespace: no route, bridge or veth of the host's is on
    // the way, only the service there.
    if dest.via == "rootlessport" {
        if let Some(ns) = cx
            .snap
            .namespaces
            .iter()
            .find(|n| dest.netns.as_ref() == Some(&n.label))
        {
            service_hop(cx, ns, dest, hops, None);
        }
        return;
    }
    // Route.
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            hops.push(
                Hop::fail(
                    "route",
                    "route",
                    Fault::NoRoute,
                    format!("no route to {} on the host: {e}", dest.addr),
                )
                .with_evidence(format!("ip route get {}", dest.addr)),
            );
            return;
        }
    };
    let out_if = route.oif.and_then(|i| host.link(i)).cloned();
    let route_text = format!(
        "ip route get {}: {} dev {}{}{}",
        dest.addr,
        route.kind,
        out_if.as_ref().map(|l| l.name.as_str()).unwrap_or("?"),
        route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default(),
        route
            .prefsrc
            .map(|s| format!(" src {s}"))
            .unwrap_or_default()
    );
    if route.kind == "local" || dest.via == "local" {
        hops.push(
            Hop::ok(
                "route",
                "route",
                format!("{} is an address of the host", dest.addr),
            )
            .with_evidence(route_text),
        );
        service_hop(cx, cx.host, dest, hops, None);
        return;
    }
    if route.kind != "unicast" {
        hops.push(
            Hop::fail(
                "route",
                "route",
                Fault::NoRoute,
                format!("the route to {} is of type {}", dest.addr, route.kind),
            )
            .with_evidence(route_text),
        );
        return;
    }
    let Some(out_if) = out_if else {
        hops.push(
            Hop::fail(
                "route",
                "route",
                Fault::NoRoute,
                "the route has no output interface",
            )
            .with_evidence(route_text),
        );
        return;
    };
    // The container's bridge down: its prefix route went with it, so the host routes the
    // address elsewhere (often out of the uplink) and every later check would follow that.
    if let Some(br) = find_target(cx, dest.addr, &out_if)
        .and_then(|t| t.outer)
        .and_then(|o| o.master)
        .filter(|m| *m != out_if.index)
        .and_then(|m| host.link(m))
        .filter(|br| br.kind == "bridge" && !br.admin_up)
    {
        let net = cx
            .snap
            .intent
            .as_ref()
            .and_then(|i| i.network_by_bridge(&br.name))
            .map(|n| format!(" ({} network {})", n.engine, n.name))
            .unwrap_or_default();
        hops.push(
            Hop::fail(
                "bridge",
                "bridge",
                Fault::BridgeDown,
                format!(
                    "bridge {}{net} that {} is on is down: its route went with it, so the host sends {} out of {} instead",
                    br.name, dest.addr, dest.addr, out_if.name
                ),
            )
            .with_evidence(route_text)
            .with_evidence(format!(
                "{}: admin down, oper {}, mtu {}",
                br.name, br.oper_state, br.mtu
            ))
            .with_fix(Some(cx.fixer.fix(
                &format!("bring {} up (its address and route come back with it)", br.name),
                &["ip", "link", "set", &br.name, "up"],
            ))),
        );
        return;
    }
    hops.push(
        Hop::ok(
            "route",
            "route",
            format!("{} via {} ({})", dest.addr, out_if.name, out_if.kind),
        )
        .with_evidence(route_text),
    );

    // Bridge (when the route leaves through one).
    let bridge = (out_if.kind == "bridge").then(|| out_if.clone());
    if let Some(br) = &bridge {
        let addrs: Vec<&Address> = host
            .addresses
            .iter()
            .filter(|a| a.index == br.index)
            .collect();
        let in_subnet = addrs.iter().find(|a| same_subnet(a, dest.addr));
        let state = format!(
            "{}: admin {}, oper {}, mtu {}, addresses {}",
            br.name,
            if br.admin_up { "up" } else { "down" },
            br.oper_state,
            br.mtu,
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs
                    .iter()
                    .map(|a| format!("{}/{}", a.address, a.prefix_len))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
        if !br.admin_up {
            hops.push(
                Hop::fail(
                    "bridge",
                    "bridge",
                    Fault::BridgeDown,
                    format!("bridge {} is down", br.name),
                )
                .with_evidence(state)
                .with_fix(Some(cx.fixer.fix(
                    &format!("bring {} up", br.name),
                    &["ip", "link", "set", &br.name, "up"],
                ))),
            );
        } else if in_subnet.is_none() {
            hops.push(
                Hop::warn(
                    "bridge",
                    "bridge",
                    Fault::NoHostAddress,
                    format!(
                        "{} is up but the host has no address in {}'s subnet on it",
                        br.name, dest.addr
                    ),
                )
                .with_evidence(state),
            );
        } else {
            let a = in_subnet.expect("checked");
            hops.push(
                Hop::ok(
                    "bridge",
                    "bridge",
                    format!(
                        "{} up, host address {}/{} covers {}",
                        br.name, a.address, a.prefix_len, dest.addr
                    ),
                )
                .with_evidence(state),
            );
        }
    }

    // The namespace that holds the destination, and the veth into it.
    let Some(target) = find_target(cx, dest.addr, &out_if) else {
        hops.push(Hop::fail(
            "target",
            "target namespace",
            Fault::TargetNotFound,
            format!(
                "no namespace behind {} holds {}: the container is gone or has another address",
                out_if.name, dest.addr
            ),
        ));
        return;
    };
    dest.netns = Some(target.ns.label.clone());
    dest.interface = target.inner.as_ref().map(|l| l.name.clone());
    let before = hops.len();
    veth_hops(cx, &target, bridge.as_ref(), hops);
    // A veth down is the cause; the route back it took with it is not a second fault.
    let veth_failed = hops[before..]
        .iter()
        .any(|h| h.verdict == super::Verdict::Fail);
    if dest.via == "dnat" && !veth_failed {
        if let Some(h) = return_route_hop(cx, &target, bridge.as_ref()) {
            hops.push(h);
        }
    }
    service_hop(cx, target.ns, dest, hops, target.inner);
    if packet.proto == Proto::Udp {
        hops.push(rules::conntrack_hop(cx, dest));
    } else {
        hops.extend(rules::tcp_conntrack_hop(cx));
    }
}

pub(crate) fn same_subnet(a: &Address, ip: IpAddr) -> bool {
    ipnet::IpNet::new(a.address, a.prefix_len)
        .map(|n| n.contains(&ip))
        .unwrap_or(false)
}

fn br_netfilter_hop(cx: &PathCtx, bridge: &str) -> Hop {
    let (name, tool, fam) = if cx.packet.dst.is_ipv6() {
        ("net.bridge.bridge-nf-call-ip6tables", "ip6tables", "IPv6")
    } else {
        ("net.bridge.bridge-nf-call-iptables", "iptables", "IPv4")
    };
    let v = cx.host.sysctl(name);
    let evidence = format!(
        "{name} = {} (client and destination are both on {bridge})",
        v.unwrap_or("absent: br_netfilter not loaded")
    );
    match v {
        Some("1") => Hop::ok(
            "br_netfilter",
            "br_netfilter",
            "on: answers bridged between containers are un-NATed",
        )
        .with_evidence(evidence),
        Some(_) => Hop::fail(
            "br_netfilter",
            "br_netfilter",
            Fault::BrNetfilter,
            format!(
                "{name} is off: the answer is bridged on {bridge} straight to the client with the container's address, and the client drops it"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix_owned(
            &format!("pass bridged {fam} traffic through {tool}/conntrack"),
            vec!["sysctl".into(), "-w".into(), format!("{name}=1")],
            false,
        ))),
        None => Hop::fail(
            "br_netfilter",
            "br_netfilter",
            Fault::BrNetfilter,
            format!(
                "br_netfilter is not loaded: answers bridged on {bridge} skip conntrack and reach the client un-NATed"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix(
            "load br_netfilter (machine-wide), then check the sysctl",
            &["modprobe", "br_netfilter"],
        ))),
    }
}

/// ip_forward is on: IPv4 still asks the interface a packet is routed in on
/// (net.ipv4.conf.IF.forwarding), the client's packets on the way in and the container's
/// answers on the interface toward it (a bridge, or a routed veth). A bridged veth is not
/// one: its frames are routed in on the bridge.
fn interface_forwarding_hop(
    cx: &PathCtx,
    route: &Result<crate::facts::RouteHit, String>,
    to: IpAddr,
    name: &str,
) -> Hop {
    let host = cx.host;
    let ok = Hop::ok("ip_forward", "ip_forward", format!("{name} = 1"));
    // IPv6 asks no interface: net.ipv6.conf.IF.forwarding=0 only makes IF behave as a host
    // (router advertisements), a connection through it is still forwarded (docs/doctor.md).
    if to.is_ipv6() {
        return ok;
    }
    let toward = route
        .as_ref()
        .ok()
        .and_then(|r| r.oif)
        .and_then(|i| host.link(i))
        .map(|l| l.name.clone());
    let mut ifs: Vec<(String, &str)> = Vec::new();
    if let Some(iif) = &cx.packet.iif {
        ifs.push((iif.clone(), "the client's packets come in on it"));
    }
    if let Some(t) = toward {
        if !ifs.iter().any(|(i, _)| *i == t) {
            ifs.push((t, "the container's answers come in on it"));
        }
    }
    let key = |i: &str| format!("net.ipv4.conf.{i}.forwarding");
    let evidence: Vec<String> = ifs
        .iter()
        .map(|(i, _)| format!("{} = {}", key(i), host.sysctl(&key(i)).unwrap_or("?")))
        .collect();
    let off: Vec<&(String, &str)> = ifs
        .iter()
        .filter(|(i, _)| host.sysctl(&key(i)) == Some("0"))
        .collect();
    if off.is_empty() {
        let mut ok = ok;
        ok.evidence = evidence;
        return ok;
    }
    let what = off
        .iter()
        .map(|(i, why)| format!("{} = 0 ({why})", key(i)))
        .collect::<Vec<_>>()
        .join(", ");
    // The temporary client --probe attached has a fresh interface, which took
    // net.ipv4.conf.default.forwarding: that default is what to fix (every interface made
    // from now on, a container's bridge or veth too, gets it), not an interface about to go.
    let temporary = match &cx.q.from {
        From::Outside { client: Some(id) } => cx
            .snap
            .ns(*id)
            .is_some_and(|n| n.label.contains("(temporary")),
        _ => false,
    };
    let default = "net.ipv4.conf.default.forwarding";
    let mut what = what;
    let mut fixed: Vec<String> = Vec::new();
    for (i, _) in &off {
        if temporary && Some(i) == cx.packet.iif.as_ref() {
            what.push_str(&format!(
                "; it is the probe's new interface, which took {default} = {}",
                host.sysctl(default).unwrap_or("?")
            ));
            fixed.push("default".into());
        } else {
            fixed.push(i.clone());
        }
    }
    let mut argv = vec!["sysctl".to_string(), "-w".to_string()];
    argv.extend(fixed.iter().map(|i| format!("{}=1", key(i))));
    let names = fixed
        .iter()
        .map(|i| {
            if i == "default" {
                "new interfaces".to_string()
            } else {
                i.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" and ");
    let mut h = Hop::fail(
        "ip_forward",
        "ip_forward",
        Fault::InterfaceForwardingOff,
        format!("{name} = 1 but {what}: the host does not forward this connection to {to}"),
    )
    .with_fix(Some(cx.fixer.fix_owned(
        &format!("turn forwarding on for {names}"),
        argv,
        false,
    )));
    h.evidence = evidence;
    h
}

fn rp_filter_hop(cx: &PathCtx, iif: &str) -> Hop {
    let host = cx.host;
    let all = host.sysctl("net.ipv4.conf.all.rp_filter");
    let dev = host.sysctl(&format!("net.ipv4.conf.{iif}.rp_filter"));
    // The kernel uses the larger of all and the interface's value.
    let eff = all
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0)
        .max(dev.and_then(|v| v.parse::<u8>().ok()).unwrap_or(0));
    let evidence = format!(
        "net.ipv4.conf.all.rp_filter = {}, net.ipv4.conf.{iif}.rp_filter = {}",
        all.unwrap_or("?"),
        dev.unwrap_or("?")
    );
    if eff != 1 {
        return Hop::ok(
            "rp_filter",
            "rp_filter",
            format!("rp_filter {eff} on {iif}: no strict reverse-path check"),
        )
        .with_evidence(evidence);
    }
    // Strict: the route back to the source must leave through the interface it came in on.
    let back = host.route_to(cx.packet.src);
    let back_if = back
        .as_ref()
        .ok()
        .and_then(|r| r.oif)
        .and_then(|i| host.link(i))
        .map(|l| l.name.clone());
    if back_if.as_deref() == Some(iif) {
        Hop::ok(
            "rp_filter",
            "rp_filter",
            format!(
                "strict, and the route back to {} leaves via {iif}",
                cx.packet.src
            ),
        )
        .with_evidence(evidence)
    } else if cx.packet.src_assumed {
        Hop::warn(
            "rp_filter",
            "rp_filter",
            Fault::RpFilter,
            format!(
                "strict rp_filter on {iif}: a client at {} would be dropped (no route back through {iif}); give the real client with --from outside:NETNS or --packet",
                cx.packet.src
            ),
        )
        .with_evidence(evidence)
    } else {
        Hop::fail(
            "rp_filter",
            "rp_filter",
            Fault::RpFilter,
            format!(
                "strict rp_filter on {iif} drops packets from {}: the route back leaves via {}",
                cx.packet.src,
                back_if.as_deref().unwrap_or("nowhere")
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix_owned(
            &format!("make reverse-path filtering loose on {iif}"),
            vec![
                "sysctl".into(),
                "-w".into(),
                "net.ipv4.conf.all.rp_filter=2".into(),
                format!("net.ipv4.conf.{iif}.rp_filter=2"),
            ],
            false,
        )))
    }
}
