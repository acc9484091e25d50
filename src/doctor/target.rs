//! The hops behind the host: the veth into the target namespace, MTU, the route back, and
//! the service listening there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::facts::NsFacts;
use crate::netns::links::Link;
use crate::netns::sockets::{Proto, Socket};

use super::fix::Fixer;
use super::path::{same_subnet, PathCtx};
use super::receiver::owners_text;
use super::{rules, Destination, Fault, Hop};

/// The namespace holding the destination and its veth into the host.
pub(crate) struct Target<'a> {
    pub(crate) ns: &'a NsFacts,
    /// The interface in the target namespace that holds the address.
    pub(crate) inner: Option<&'a Link>,
    /// The host end of its veth.
    pub(crate) outer: Option<&'a Link>,
}

/// The namespace behind the host that holds `addr`: with several (other labs), the one whose
/// veth ends in this host on the output interface.
pub(crate) fn find_target<'a>(cx: &PathCtx<'a>, addr: IpAddr, out_if: &Link) -> Option<Target<'a>> {
    let snap = cx.snap;
    let host_id = snap.host;
    let mut fallback = None;
    let candidates = snap.namespaces.iter().filter(|n| match cx.q.container {
        Some(c) => n.id == c,
        None => n.id != host_id,
    });
    for ns in candidates {
        let Some(a) = ns.addresses.iter().find(|a| a.address == addr) else {
            continue;
        };
        let inner = ns.link(a.index);
        let outer = snap
            .peer_of(ns, a.index)
            .filter(|(p, _)| p.id == host_id)
            .map(|(_, l)| l);
        let t = Target { ns, inner, outer };
        match outer {
            Some(o) if o.master == Some(out_if.index) || o.index == out_if.index => return Some(t),
            Some(_) => fallback = Some(t),
            None if fallback.is_none() && cx.q.container.is_some() => fallback = Some(t),
            None => {}
        }
    }
    fallback
}

fn link_state(l: &Link) -> String {
    format!(
        "{}: admin {}, oper {}, mtu {}",
        l.name,
        if l.admin_up { "up" } else { "down" },
        l.oper_state,
        l.mtu
    )
}

pub(crate) fn veth_hops(cx: &PathCtx, t: &Target<'_>, bridge: Option<&Link>, hops: &mut Vec<Hop>) {
    let (Some(inner), Some(outer)) = (&t.inner, &t.outer) else {
        hops.push(Hop::warn(
            "veth",
            "veth",
            Fault::TargetNotFound,
            format!(
                "{} holds the address but no veth of it ends in the host namespace",
                t.ns.label
            ),
        ));
        return;
    };
    let ev_outer = format!("host end {}", link_state(outer));
    let ev_inner = format!("{} end {}", t.ns.label, link_state(inner));
    let title = "veth";
    if !outer.admin_up {
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!(
                    "the host end {} of the veth to {} is down",
                    outer.name, t.ns.label
                ),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner)
            .with_fix(Some(cx.fixer.fix(
                &format!("bring {} up", outer.name),
                &["ip", "link", "set", &outer.name, "up"],
            ))),
        );
    } else if !inner.admin_up {
        // A CNI container's interface down took its routes with it (up again, it has only its
        // subnet's): the chain's own DEL and ADD make the whole attachment again.
        let cni = cx.snap.intent.as_ref().and_then(|i| {
            i.containers.iter().find(|c| {
                c.engine == crate::engine::EngineKind::Cni
                    && t.ns.containers.iter().any(|r| r.id == c.id)
            })
        });
        let fix = match cni.and_then(|c| super::cni::cni_chain_readd(cx.snap, c, cx.fixer)) {
            Some(f) => f,
            None => cx.fixer.fix_owned(
                &format!("bring {} up inside {}", inner.name, t.ns.label),
                Fixer::in_ns(t.ns, &["ip", "link", "set", &inner.name, "up"]),
                false,
            ),
        };
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!(
                    "{} inside {} is down (the routes through it went with it)",
                    inner.name, t.ns.label
                ),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner)
            .with_fix(Some(fix)),
        );
    } else if bridge.is_some_and(|b| outer.master != Some(b.index)) {
        let b = bridge.expect("checked");
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!("{} is not a port of {}", outer.name, b.name),
            )
            .with_evidence(ev_outer)
            .with_fix(Some(cx.fixer.fix(
                &format!("attach {} to {}", outer.name, b.name),
                &["ip", "link", "set", &outer.name, "master", &b.name],
            ))),
        );
    } else {
        hops.push(
            Hop::ok(
                "veth",
                title,
                format!(
                    "{} (host) <-> {} ({}) both up",
                    outer.name, inner.name, t.ns.label
                ),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner),
        );
    }

    // MTU: both ends of the veth and the bridge should agree; the larger end loses packets.
    let mut mtus = vec![
        (outer.name.clone(), outer.mtu),
        (inner.name.clone(), inner.mtu),
    ];
    if let Some(b) = bridge {
        mtus.push((b.name.clone(), b.mtu));
    }
    let min = mtus.iter().map(|m| m.1).min().unwrap_or(0);
    let evidence = mtus
        .iter()
        .map(|(n, m)| format!("{n} mtu {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    if inner.mtu != outer.mtu {
        // The network is the reference: the MTU its other containers' host ends agree on (the
        // bridge's when it has no other port, or they disagree), so the fix moves the odd end
        // of this one veth to it and never lowers (or raises) the bridge or another
        // container's port. Without a bridge the host end is.
        let others: Vec<u32> = bridge
            .map(|b| {
                cx.host
                    .links
                    .iter()
                    .filter(|l| l.master == Some(b.index) && l.index != outer.index)
                    .map(|l| l.mtu)
                    .collect()
            })
            .unwrap_or_default();
        let reference = bridge.map(|b| match others.split_first() {
            Some((&m, rest)) if rest.iter().all(|&x| x == m) => (
                b.name.as_str(),
                m,
                format!("the other ports of {} have", b.name),
            ),
            _ => (b.name.as_str(), b.mtu, format!("its bridge {} has", b.name)),
        });
        let want = reference.as_ref().map(|r| r.1).unwrap_or(outer.mtu);
        let keep = match &reference {
            Some((br, _, _)) => format!(" ({br} and its other ports keep theirs)"),
            None => String::new(),
        };
        let (summary, fix) = if outer.mtu != want {
            let (_, _, whose) = reference
                .as_ref()
                .expect("want differs from outer only with a bridge");
            (
                format!(
                    "the host end {} has mtu {} but {whose} {want} and {} inside {} has {}: large packets are dropped on the way in or out",
                    outer.name, outer.mtu, inner.name, t.ns.label, inner.mtu
                ),
                cx.fixer.fix_owned(
                    &format!("set {} to mtu {want}, the network's{keep}", outer.name),
                    vec![
                        "ip".into(),
                        "link".into(),
                        "set".into(),
                        outer.name.clone(),
                        "mtu".into(),
                        want.to_string(),
                    ],
                    false,
                ),
            )
        } else {
            let why = if inner.mtu > outer.mtu {
                "large packets from the container are dropped"
            } else {
                "large packets to the container are dropped (TCP's MSS hides it, UDP and ICMP do not)"
            };
            (
                format!(
                    "{} inside {} has mtu {} but the host end {} has {}: {why}",
                    inner.name, t.ns.label, inner.mtu, outer.name, outer.mtu
                ),
                cx.fixer.fix_owned(
                    &format!(
                        "set {} inside {} to mtu {want}, the host end's{keep}",
                        inner.name, t.ns.label
                    ),
                    Fixer::in_ns(
                        t.ns,
                        &["ip", "link", "set", &inner.name, "mtu", &want.to_string()],
                    ),
                    false,
                ),
            )
        };
        hops.push(
            Hop::fail("mtu", "mtu", Fault::MtuMismatch, summary)
                .with_evidence(evidence)
                .with_fix(Some(fix)),
        );
    } else if mtus.iter().any(|m| m.1 != min) {
        hops.push(
            Hop::warn(
                "mtu",
                "mtu",
                Fault::MtuMismatch,
                format!("the veth has mtu {} but the bridge differs", inner.mtu),
            )
            .with_evidence(evidence),
        );
    } else {
        hops.push(Hop::ok("mtu", "mtu", format!("{min} on every hop")).with_evidence(evidence));
    }
}

/// Can the target answer? Its route back to the source as it arrives there (after any SNAT).
pub(crate) fn return_route_hop(cx: &PathCtx, t: &Target<'_>, bridge: Option<&Link>) -> Option<Hop> {
    let src = cx.walk.map(|w| w.final_packet.src).unwrap_or(cx.packet.src);
    match t.ns.route_to(src) {
        Ok(r) => {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            let dev = r
                .oif
                .and_then(|i| t.ns.links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_else(|| "?".into());
            Some(Hop::ok(
                "return",
                "route back",
                format!("{} answers {src}{via} dev {dev}", t.ns.label),
            ))
        }
        Err(e) => {
            // The usual fix: a default route through the host's address on the bridge.
            let inner = t.inner.as_ref()?;
            let gw = bridge.and_then(|b| {
                cx.host
                    .addresses
                    .iter()
                    .filter(|a| {
                        a.index == b.index
                            && a.address.is_ipv4() == src.is_ipv4()
                            && !crate::facts::is_link_local(a.address)
                    })
                    .find(|a| {
                        t.ns.addresses
                            .iter()
                            .any(|c| c.index == inner.index && same_subnet(a, c.address))
                    })
                    .map(|a| a.address.to_string())
            });
            let fix = gw.map(|gw| {
                cx.fixer.fix_owned(
                    &format!(
                        "give {} a default route through the host ({gw})",
                        t.ns.label
                    ),
                    Fixer::in_ns(
                        t.ns,
                        &[
                            "ip",
                            "route",
                            "add",
                            "default",
                            "via",
                            &gw,
                            "dev",
                            &inner.name,
                        ],
                    ),
                    false,
                )
            });
            Some(
                Hop::fail(
                    "return",
                    "route back",
                    Fault::NoReturnRoute,
                    format!(
                        "{} has no route back to {src}: its answers are never sent",
                        t.ns.label
                    ),
                )
                .with_evidence(format!("ip route get {src} in {}: {e}", t.ns.label))
                .with_fix(fix),
            )
        }
    }
}

/// A service listening in one family only (`s`) while the packet comes over the other: the
/// FAIL `fault` with the sentence `says(who, listen)` makes, and a relay inside the namespace
/// from the address the packet reaches to where the service listens (its family's loopback
/// when it listens on every address).
fn one_family_only(
    cx: &PathCtx,
    ns: &NsFacts,
    dest: &Destination,
    s: &Socket,
    fault: Fault,
    says: impl FnOnce(&str, &str) -> String,
) -> Hop {
    let who = s
        .owners
        .first()
        .map(|o| o.comm.clone())
        .unwrap_or_else(|| "the service".into());
    let to = if s.local.ip().is_unspecified() {
        let lo: IpAddr = if s.local.is_ipv6() {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        SocketAddr::new(lo, dest.port).to_string()
    } else {
        s.local.to_string()
    };
    let listen = SocketAddr::new(dest.addr, dest.port).to_string();
    Hop::fail("service", "service", fault, says(&who, &listen)).with_fix(Some(cx.fixer.fix_owned(
        &format!(
            "until {who} is reconfigured, relay {listen} to {to} inside {}",
            ns.label
        ),
        Fixer::in_ns(ns, &[&cx.snap.meta.exe, "proxy", &listen, &to]),
        true,
    )))
}

/// Does anything listen on the destination port inside `ns`?
pub(crate) fn service_hop(
    cx: &PathCtx,
    ns: &NsFacts,
    dest: &Destination,
    hops: &mut Vec<Hop>,
    _inner: Option<&Link>,
) {
    let proto = cx.packet.proto;
    // 0.0.0.0 takes IPv4 only; [::] takes both unless IPV6_V6ONLY is set on it.
    let matches_addr = |s: &Socket| s.takes(dest.addr);
    let listening: Vec<&Socket> = ns.listeners.iter().filter(|s| s.proto == proto).collect();
    if let Some(s) = listening
        .iter()
        .find(|s| s.local.port() == dest.port && matches_addr(s))
    {
        hops.push(
            Hop::ok(
                "service",
                "service",
                format!(
                    "{} listens on {} in {}",
                    s.owners
                        .first()
                        .map(|o| format!("{} (pid {})", o.comm, o.pid))
                        .unwrap_or_else(|| "a socket".into()),
                    s.local,
                    ns.label
                ),
            )
            .with_evidence(format!(
                "{} {} {} owners {}",
                s.proto,
                s.state,
                s.local,
                owners_text(&s.owners)
            )),
        );
        return;
    }
    let evidence: Vec<String> = listening
        .iter()
        .map(|s| {
            format!(
                "{} {} {} owners {}",
                s.proto,
                s.state,
                s.local,
                owners_text(&s.owners)
            )
        })
        .collect();
    // Something listens on another port: when a DNAT rule chose the port, the rule is wrong.
    let others: Vec<&&Socket> = listening
        .iter()
        .filter(|s| matches_addr(s) && !s.local.ip().is_loopback())
        .collect();
    if let ([only], true) = (
        others.as_slice(),
        dest.rule.is_some() || dest.via == "proxy" || dest.via == "rootlessport",
    ) {
        let good = only.local.port();
        let who = only
            .owners
            .first()
            .map(|o| o.comm.clone())
            .unwrap_or_else(|| "the service".into());
        // An engine's container: its rules are the engine's (rewritten on every start, with
        // their filter rules), so the fix lives in the container, not in the firewall.
        let engine = cx.snap.intent.as_ref().and_then(|i| {
            i.containers.iter().find(|c| {
                c.engine != crate::engine::EngineKind::Lab
                    && c.attachments.iter().any(|a| {
                        a.ipv4.map(std::net::IpAddr::V4) == Some(dest.addr)
                            || a.ipv6.map(std::net::IpAddr::V6) == Some(dest.addr)
                    })
            })
        });
        // How the engine is told the container port: -p for Docker and Podman, the runtime's
        // portMappings (handed to portmap) for CNI.
        let recreate = |c: &crate::engine::Container| {
            match c.engine {
            crate::engine::EngineKind::Cni => format!(
                "CNI portmap's mapping for {} has containerPort {} but {who} listens on {good} in {}: the runtime's portMappings should say containerPort {good} (given at the CNI ADD; or make {who} listen on {})",
                c.name, dest.port, ns.label, dest.port
            ),
            _ => format!(
                "{} publishes its port to container port {} but {who} listens on {good} in {}: re-create {} with -p HOST:{good} (or make {who} listen on {})",
                c.name, dest.port, ns.label, c.name, dest.port
            ),
        }
        };
        let (summary, fix) = match (engine, &dest.rule) {
            (Some(c), _) => (
                recreate(c),
                Some(cx.fixer.fix_owned(
                    &format!(
                        "{}, relay port {} to {good} inside {}",
                        match c.engine {
                            crate::engine::EngineKind::Cni => format!(
                                "until {}'s mappings are added with containerPort {good}",
                                c.name
                            ),
                            _ => format!("until {} is re-created", c.name),
                        },
                        dest.port,
                        ns.label
                    ),
                    Fixer::in_ns(
                        ns,
                        &[
                            &cx.snap.meta.exe,
                            "proxy",
                            &dest.port.to_string(),
                            &format!("127.0.0.1:{good}"),
                        ],
                    ),
                    true,
                )),
            ),
            (None, Some(rule)) => (
                format!(
                    "the DNAT rule sends to port {} but {who} listens on {good} in {}",
                    dest.port, ns.label
                ),
                rules::dnat_port_fix(rule, dest.addr, good).map(|argv| {
                    cx.fixer
                        .fix_owned(&format!("point the DNAT rule at port {good}"), argv, false)
                }),
            ),
            (None, None) => (
                format!(
                    "the proxy sends to port {} but {who} listens on {good} in {}",
                    dest.port, ns.label
                ),
                None,
            ),
        };
        let mut hop = Hop::fail("service", "service", Fault::DnatWrongPort, summary).with_fix(fix);
        if let Some(rule) = &dest.rule {
            hop.evidence.push(rule.text.clone());
        }
        hop.evidence.extend(evidence);
        hops.push(hop);
        return;
    }
    // Over IPv6, a service on 0.0.0.0 (IPv4 only) while the port is published over IPv6 too.
    if let (true, Some(v4)) = (
        dest.addr.is_ipv6(),
        listening.iter().find(|s| {
            s.local.port() == dest.port && s.local.ip().is_ipv4() && !s.local.ip().is_loopback()
        }),
    ) {
        let mut hop = one_family_only(cx, ns, dest, v4, Fault::ServiceIpv4Only, |who, listen| {
            format!(
                "{who} listens on {} inside {}, IPv4 only: connections over IPv6 to {listen} find nothing; make {who} listen on [::]:{} (both families)",
                v4.local, ns.label, dest.port
            )
        });
        hop.evidence.extend(evidence);
        hops.push(hop);
        return;
    }
    // Over IPv4, a service on [::] with IPV6_V6ONLY (or on an IPv6 address): IPv6 only.
    if let (true, Some(v6)) = (
        dest.addr.is_ipv4(),
        listening.iter().find(|s| {
            s.local.port() == dest.port && s.local.ip().is_ipv6() && !s.local.ip().is_loopback()
        }),
    ) {
        let why = if v6.v6only {
            "with IPV6_V6ONLY set, IPv6 only"
        } else {
            "IPv6 only"
        };
        let mut hop = one_family_only(cx, ns, dest, v6, Fault::ServiceIpv6Only, |who, listen| {
            format!(
                "{who} listens on {} inside {} {why}: connections over IPv4 to {listen} find nothing; make {who} listen on [::]:{} with IPV6_V6ONLY off (both families), or on 0.0.0.0:{} too",
                v6.local, ns.label, dest.port, dest.port
            )
        });
        hop.evidence.extend(evidence);
        hops.push(hop);
        return;
    }
    // Listening on the container's loopback only, or on another of its addresses: nothing
    // sent to the destination address reaches it.
    if let Some(lo) =
        super::bound::bound_elsewhere(listening.iter().copied(), proto, dest.port, dest.addr)
    {
        let who = lo
            .owners
            .first()
            .map(|o| o.comm.clone())
            .unwrap_or_else(|| "the service".into());
        let at = |a: IpAddr| SocketAddr::new(a, dest.port).to_string();
        let relay = Fixer::in_ns(
            ns,
            &[
                &cx.snap.meta.exe,
                "proxy",
                &at(dest.addr),
                &at(lo.local.ip()),
            ],
        );
        let fault = super::bound::fault_of(lo, dest.addr);
        let how = super::bound::setting(
            super::bound::kind_of(cx.snap, lo.owners.first()),
            lo,
            SocketAddr::new(dest.addr, dest.port),
        );
        let summary = if fault == Fault::ServiceOnLoopback {
            format!(
                "{who} listens on {} inside {}, its loopback only: connections to {} find nothing; make {who} listen on {}:{} ({how})",
                lo.local,
                ns.label,
                at(dest.addr),
                super::bound::wildcard_of(dest.addr),
                dest.port
            )
        } else {
            format!(
                "{who} listens on {} inside {}, on that address only: connections to {} find nothing; make {who} listen on {}:{} or on {} ({how})",
                lo.local,
                ns.label,
                at(dest.addr),
                super::bound::wildcard_of(dest.addr),
                dest.port,
                at(dest.addr)
            )
        };
        let mut hop =
            Hop::fail("service", "service", fault, summary).with_fix(Some(cx.fixer.fix_owned(
                &format!(
                    "until {who} is reconfigured, relay {} to {} inside {}",
                    at(dest.addr),
                    lo.local,
                    ns.label
                ),
                relay,
                true,
            )));
        hop.evidence.extend(evidence);
        hops.push(hop);
        return;
    }
    // The lab's own `run` command when the lab says what the container runs; otherwise a
    // built-in stand-in that answers, so the path can be proven.
    let (what, cmd) = match cx.snap.lab_service(ns.id) {
        Some((name, argv)) => (format!("the lab's service of {name}"), argv.to_vec()),
        None => {
            let kind = if proto == Proto::Udp {
                "udp-echo"
            } else {
                "http"
            };
            (
                format!("a stand-in: nettool serve {kind}"),
                vec![
                    cx.snap.meta.exe.clone(),
                    "serve".into(),
                    kind.into(),
                    dest.port.to_string(),
                ],
            )
        }
    };
    let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let serve = what;
    let argv = Fixer::in_ns(ns, &cmd_ref);
    let mut hop = Hop::fail(
        "service",
        "service",
        Fault::NotListening,
        format!("nothing listens on {}/{} in {}", proto, dest.port, ns.label),
    )
    .with_fix(Some(cx.fixer.fix_owned(
        &format!(
            "start the service on port {} inside {} (here: {})",
            dest.port, ns.label, serve
        ),
        argv,
        true,
    )));
    if evidence.is_empty() {
        hop.evidence
            .push(format!("no {proto} sockets listen in {}", ns.label));
    }
    hop.evidence.extend(evidence);
    hops.push(hop);
}

#[cfg(test)]
mod tests {
    use crate::doctor::{replay, Fault};

    /// docker0 and web's host end raised to 9000, web's eth0 at 1500 (recorded on a real
    /// dockerd): with no other port on docker0 the bridge is the network's MTU and web's eth0
    /// is raised to it. With another container's port on docker0 at 1500, that is the
    /// network's MTU: the odd host end is lowered to it, and neither docker0 nor the other
    /// container's port is touched.
    #[test]
    fn an_mtu_fix_moves_the_odd_end_to_the_networks_mtu() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("captures/doctor/docker-mtu-bridge-9000.json");
        let mut snap = crate::facts::load(&p).unwrap();
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fault, Some(Fault::MtuMismatch));
        let fix = r.diagnosis.fix.unwrap();
        assert!(
            fix.command.ends_with("ip link set eth0 mtu 9000"),
            "{}",
            fix.command
        );
        let host = snap.host;
        let h = snap.namespaces.iter_mut().find(|n| n.id == host).unwrap();
        let br = h
            .links
            .iter()
            .find(|l| l.name == "docker0")
            .unwrap()
            .clone();
        let veth = h
            .links
            .iter()
            .find(|l| l.master == Some(br.index))
            .unwrap()
            .clone();
        let mut other = veth.clone();
        other.index = 9999;
        other.name = "vethother".into();
        other.mtu = 1500;
        h.links.push(other);
        let r = replay(&snap).unwrap();
        assert_eq!(r.diagnosis.fault, Some(Fault::MtuMismatch));
        let fix = r.diagnosis.fix.unwrap();
        assert_eq!(fix.argv, ["ip", "link", "set", &veth.name, "mtu", "1500"]);
        assert!(
            r.diagnosis
                .line
                .contains("the other ports of docker0 have 1500"),
            "{}",
            r.diagnosis.line
        );
    }
}
