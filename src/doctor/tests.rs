//! The checks as pure functions: every snapshot recorded from a real host in
//! captures/doctor/ replays to the verdict the live run gave (NAME.verdict.json beside it).

use super::*;

fn captures() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("captures/doctor");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && !p.to_string_lossy().ends_with(".verdict.json")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn recorded_snapshots_replay_to_their_live_verdicts() {
    let all = captures();
    assert!(
        all.len() >= 8,
        "captures/doctor holds {} snapshots",
        all.len()
    );
    for path in all {
        let snap = facts::load(&path).unwrap();
        let verdict_path = path.with_extension("verdict.json");
        let live: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&verdict_path).unwrap()).unwrap();
        let r = replay(&snap).unwrap();
        let got = serde_json::to_value(&r.diagnosis).unwrap();
        assert_eq!(got, live, "{}", path.display());
        let fails = r.hops.iter().filter(|h| h.verdict == Verdict::Fail).count();
        assert!(fails <= 1, "{}: one cause, one FAIL", path.display());
    }
}

#[test]
fn a_dual_stack_port_is_followed_over_both_families_and_a_v6_fault_is_named_on_v6() {
    let load = |name: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        replay(&facts::load(&p).unwrap()).unwrap()
    };
    let ok = load("docker-dual-stack-healthy");
    assert!(ok.diagnosis.ok, "{}", ok.diagnosis.line);
    let v6 = ok.ipv6.as_ref().expect("followed over IPv6 too");
    assert!(v6.destination.as_ref().unwrap().addr.is_ipv6());
    assert!(v6.probe.as_ref().unwrap().ok);
    for (name, fault) in [
        ("docker-ipv6-dnat-deleted", Fault::DnatMissing),
        ("docker-ipv6-service-on-ipv4-only", Fault::ServiceIpv4Only),
    ] {
        let r = load(name);
        assert_eq!(r.diagnosis.fault, Some(fault), "{name}");
        assert!(r.diagnosis.line.starts_with("over IPv6: "), "{name}");
        // The IPv4 half is clear: the fault is the IPv6 path's alone.
        assert!(r
            .hops
            .iter()
            .filter(|h| h.family == Some(Family::Ipv4))
            .all(|h| h.verdict == Verdict::Ok));
    }
    // Asked over IPv4 only (the client's address given), the same broken host is clear.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/docker-ipv6-service-on-ipv4-only.json");
    let snap = facts::load(&p).unwrap();
    let mut q = snap.question.clone().unwrap();
    q.dst = Some("192.0.2.1".parse().unwrap());
    let r = judge(&snap, &q).unwrap();
    assert!(r.ipv6.is_none() && r.diagnosis.ok, "{}", r.diagnosis.line);
}

#[test]
fn a_missing_ipv6_dnat_says_whether_a_socket_listens_where_the_walk_delivers() {
    // Before: "walk: delivered locally: a socket on [v6]:PORT receives it" under a
    // dnat_missing that says nothing receives the port: the evidence contradicted the finding.
    for (name, want) in [
        (
            "podman-ipv6-dnat-deleted",
            "walk: delivered locally to [2001:db8:1::1]:18582: no socket listens there, nor on [::]:18582",
        ),
        (
            "cni-ipv6-dnat-deleted",
            "walk: delivered locally to [2001:db8:1::1]:18498: no socket listens there, nor on [::]:18498",
        ),
        (
            "docker-ipv6-dnat-deleted",
            "walk: delivered locally to [2001:db8:1::1]:8080: docker-proxy (pid 9865) listens on [::]:8080",
        ),
    ] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        let r = replay(&facts::load(&p).unwrap()).unwrap();
        let fail = r
            .hops
            .iter()
            .find(|h| h.fault == Some(Fault::DnatMissing))
            .unwrap_or_else(|| panic!("{name}: no dnat_missing hop"));
        assert!(fail.evidence.iter().any(|e| e == want), "{name}: {:?}", fail.evidence);
        let all = r.hops.iter().flat_map(|h| &h.evidence);
        assert!(
            all.clone().all(|e| !e.contains("receives it")),
            "{name}: {:?}",
            all.collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_engine_hop_shows_the_binding_of_each_family_judged() {
    // Before: a dual-stack port diagnosed over IPv6 showed only the IPv4 listing
    // ("publishes 0.0.0.0:8080->80/tcp") on the one engine hop both paths share.
    for (name, both, v6) in [
        (
            "docker-ipv6-dnat-deleted",
            "0.0.0.0:8080->80/tcp and [::]:8080->80/tcp",
            "[::]:8080->80/tcp",
        ),
        (
            "podman-ipv6-dnat-deleted",
            "0.0.0.0:18582->80/tcp and [::]:18582->80/tcp",
            "[::]:18582->80/tcp",
        ),
        (
            "cni-ipv6-dnat-deleted",
            "0.0.0.0:18498->80/tcp and [::]:18498->80/tcp",
            "[::]:18498->80/tcp",
        ),
    ] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        let snap = facts::load(&p).unwrap();
        let r = replay(&snap).unwrap();
        // (engine::dnat_missing's hop carries the id too: it is the receiver's, per family.)
        let engine: Vec<_> = r
            .hops
            .iter()
            .filter(|h| h.id == "engine" && h.family.is_none())
            .collect();
        assert_eq!(engine.len(), 1, "{name}: {engine:?}");
        assert!(
            engine[0].summary.ends_with(&format!("publishes {both}")),
            "{name}: {}",
            engine[0].summary
        );
        assert!(
            engine[0].evidence[0].ends_with(&format!("publishes {both}")),
            "{name}: {:?}",
            engine[0].evidence
        );
        // Asked over IPv6 only (the destination given): the IPv6 listing alone.
        let mut q = snap.question.clone().unwrap();
        q.dst = Some("2001:db8:1::1".parse().unwrap());
        let r = judge(&snap, &q).unwrap();
        let engine = r.hops.iter().find(|h| h.id == "engine").unwrap();
        assert!(
            engine.summary.ends_with(&format!("publishes {v6}")),
            "{name}: {}",
            engine.summary
        );
    }
}

/// A TCP or UDP conntrack entry for `sport` -> `dst`:`dport`, answered from `reply`.
fn ct(
    proto: Proto,
    state: Option<&str>,
    dst: &str,
    sport: u16,
    dport: u16,
    reply: &str,
) -> facts::CtEntry {
    let reply: SocketAddr = reply.parse().unwrap();
    let text = format!("{proto} test entry {sport} -> {dst}:{dport}, answered from {reply}");
    let mut e: facts::CtEntry = serde_json::from_value(serde_json::json!({
        "proto": proto,
        "src": "192.0.2.2",
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "reply_src": reply.ip(),
        "reply_sport": reply.port(),
        "text": text,
    }))
    .unwrap();
    e.tcp_state = state.map(|s| serde_json::from_value(serde_json::json!(s)).unwrap());
    e
}

#[test]
fn tcp_conntrack_entries_are_evidence_and_only_udp_ones_are_judged() {
    let load = |name: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        facts::load(&p).unwrap()
    };
    // A TCP port: its entries are shown, not judged, even one answered from elsewhere.
    let mut snap = load("docker-healthy");
    // Recorded before TCP was read: no entry, no hop.
    let before = replay(&snap).unwrap();
    assert!(!before.hops.iter().any(|h| h.id == "conntrack"));
    snap.conntrack = Some(vec![
        ct(
            Proto::Tcp,
            Some("ESTABLISHED"),
            "192.0.2.1",
            40000,
            8080,
            "172.17.0.2:80",
        ),
        ct(
            Proto::Tcp,
            Some("SYN_SENT"),
            "192.0.2.1",
            40001,
            8080,
            "192.0.2.1:8080",
        ),
        ct(Proto::Udp, None, "192.0.2.1", 40002, 8080, "192.0.2.1:8080"),
    ]);
    let r = replay(&snap).unwrap();
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
    let hop = r
        .hops
        .iter()
        .find(|h| h.id == "conntrack")
        .expect("a conntrack hop");
    assert_eq!(hop.verdict, Verdict::Ok);
    assert!(
        hop.summary.starts_with("2 TCP entries for port 8080 (1 ESTABLISHED, 1 SYN_SENT), answered from 172.17.0.2:80 (1), 192.0.2.1:8080 (1): evidence, not judged"),
        "{}",
        hop.summary
    );
    assert_eq!(hop.evidence.len(), 2, "{:?}", hop.evidence);
    // A UDP port through docker-proxy: a TCP entry on the same port answered by the host
    // (stale, were it UDP) is not judged; the UDP entries alone are.
    let mut snap = load("docker-udp-through-proxy");
    let udp = snap.conntrack.clone().expect("recorded UDP entries");
    assert!(udp.iter().all(|e| e.proto == Proto::Udp));
    let port = udp[0].dport.unwrap();
    let dst = udp[0].dst.unwrap().to_string();
    snap.conntrack.as_mut().unwrap().push(ct(
        Proto::Tcp,
        Some("ESTABLISHED"),
        &dst,
        41000,
        port,
        "10.9.9.9:9",
    ));
    let r = replay(&snap).unwrap();
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
    let hop = r.hops.iter().find(|h| h.id == "conntrack").unwrap();
    assert!(hop.summary.contains("UDP entr"), "{}", hop.summary);
    assert!(hop.summary.contains("none stale"), "{}", hop.summary);
    // The same entry as UDP is judged stale: the check does look at what it is given.
    let last = snap.conntrack.as_mut().unwrap().last_mut().unwrap();
    last.proto = Proto::Udp;
    last.tcp_state = None;
    let r = replay(&snap).unwrap();
    assert_eq!(
        r.diagnosis.fault,
        Some(Fault::StaleConntrack),
        "{}",
        r.diagnosis.line
    );
}

#[test]
fn a_port_published_on_ipv4_only_is_not_followed_over_ipv6() {
    // The dual-stack host, with web published as -p 0.0.0.0:8080:80 (Docker then writes
    // no IPv6 DNAT for it): IPv4 only, all clear, no false "DNAT missing" over IPv6.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/docker-dual-stack-healthy.json");
    let mut snap = facts::load(&p).unwrap();
    for c in &mut snap.intent.as_mut().unwrap().containers {
        c.ports.retain(|b| b.host_ip.is_none_or(|ip| ip.is_ipv4()));
    }
    let v6 = snap.firewall.ip6tables_nft.take().unwrap();
    snap.firewall.ip6tables_nft = Some(
        v6.lines()
            .filter(|l| !l.contains("-j DNAT"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    snap.probes.retain(|p| !p.target.starts_with('['));
    let r = replay(&snap).unwrap();
    assert!(r.ipv6.is_none(), "{}", r.diagnosis.line);
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
}

#[test]
fn a_missing_cni_port_mapping_is_re_added_with_the_cached_portmap_config() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/cni-portmap-dnat-deleted.json");
    let r = replay(&facts::load(&p).unwrap()).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::DnatMissing));
    let fix = r.diagnosis.fix.unwrap();
    assert_eq!(fix.argv[..2], ["sh".to_string(), "-c".to_string()]);
    // The portmap entry of the cached list (its snat option kept), the container's
    // mappings and its address: what libcni hands portmap.
    let conf: serde_json::Value = serde_json::from_str(&fix.argv[4]).unwrap();
    assert_eq!(conf["type"], "portmap");
    assert_eq!(conf["snat"], true);
    assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 18495);
    assert_eq!(conf["prevResult"]["ips"][0]["address"], "10.77.5.2/24");
    assert!(fix.argv[5].starts_with("nt-test-ctr-"), "{:?}", fix.argv);
}

#[test]
fn forwarding_off_is_one_fail_even_when_the_engine_rule_is_the_last_one_crossed() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/docker-ip-forward-off.json");
    let mut snap = facts::load(&path).unwrap();
    let r = replay(&snap).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::IpForwardOff));
    // The same host with forwarding on: all clear (the check reads the recorded sysctl).
    // Writing ip_forward writes every interface's forwarding too, as the kernel does.
    for n in &mut snap.namespaces {
        if n.id == snap.host {
            for (k, v) in n.sysctls.iter_mut() {
                if k == "net.ipv4.ip_forward"
                    || k.starts_with("net.ipv4.conf.") && k.ends_with(".forwarding")
                {
                    *v = "1".into();
                }
            }
        }
    }
    snap.probes.clear();
    let r = replay(&snap).unwrap();
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
}

/// A probe that got bytes back through a proxy whose target name does not resolve: the line
/// says why by the proxy's kind carried on the hop (a nettool proxy dials its last addresses;
/// socat looks the name up per connection), not one sentence for every proxy.
#[test]
fn the_probe_through_an_unresolved_name_is_worded_by_the_proxys_kind() {
    use crate::facts::proxies::ProxyKind;
    let line = |kind: Option<ProxyKind>| {
        let mut hop = Hop::fail(
            "receiver",
            "who receives it",
            Fault::ProxyTargetUnresolved,
            "P proxies to db:80, which does not resolve where it runs",
        );
        hop.proxy = kind;
        let r = Report {
            host_netns: "h".into(),
            from: "localhost".into(),
            packet: None,
            destination: None,
            hops: vec![hop],
            diagnosis: Diagnosis {
                ok: true,
                fault: None,
                hop: None,
                line: String::new(),
                fix: None,
            },
            probe: Some(facts::ProbeResult {
                from_netns: None,
                target: "127.0.0.1:9090".into(),
                ok: true,
                connected: true,
                sent: 4,
                received: 4,
                outcome: "answered".into(),
                elapsed_ms: 1,
                trace: None,
            }),
            ipv6: None,
            reads: Default::default(),
        };
        conclude(&r).line
    };
    assert!(line(Some(ProxyKind::Nettool))
        .ends_with("(it dials the last addresses it had for the name)"));
    let socat = line(Some(ProxyKind::Socat));
    assert!(
        socat.ends_with("(socat looks the name up per connection: it resolved for socat then)"),
        "{socat}"
    );
    assert!(!socat.contains("last addresses"), "{socat}");
}

#[test]
fn a_listener_bound_to_another_address_is_named_by_where_it_listens() {
    // socat bound to 198.51.100.1 (on the host's lo), the client outside using 192.0.2.1
    // (recorded by tests/doctor.rs): before, no_receiver.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/lab-socat-on-other-address.json");
    let snap = facts::load(&p).unwrap();
    let with = |f: &dyn Fn(&mut facts::Snapshot)| {
        let mut s = snap.clone();
        f(&mut s);
        replay(&s).unwrap()
    };
    let host_of = |s: &mut facts::Snapshot| {
        let host = s.host;
        s.namespaces.iter().position(|n| n.id == host).unwrap()
    };
    // socat restarted with bind=IP: its socket and its map both move.
    let bind = |ip: &'static str| {
        move |s: &mut facts::Snapshot| {
            let i = host_of(s);
            let sock = s.namespaces[i]
                .listeners
                .iter_mut()
                .find(|s| s.local.port() == 9093)
                .unwrap();
            sock.local.set_ip(ip.parse().unwrap());
            for m in s.proxies.iter_mut().flat_map(|p| &mut p.maps) {
                m.listen_ip = Some(ip.parse().unwrap());
            }
        }
    };
    let r = replay(&snap).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnOtherAddress));
    assert_eq!(r.diagnosis.hop.as_deref(), Some("receiver"));
    assert!(
        r.diagnosis.line.contains(
            "listens on 198.51.100.1:9093 only (another address of the host) and proxies to 10.89.0.2:80"
        ),
        "{}",
        r.diagnosis.line
    );
    let fails = r.hops.iter().filter(|h| h.verdict == Verdict::Fail).count();
    assert_eq!(fails, 1, "one cause, one finding");
    // The address gone from the host (a socket keeps it): the same finding, said so.
    let gone: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let r = with(&|s| {
        let i = host_of(s);
        s.namespaces[i].addresses.retain(|a| a.address != gone)
    });
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnOtherAddress));
    assert!(r
        .diagnosis
        .line
        .contains("(an address the host does not have now)"));
    assert!(r.hops[0]
        .evidence
        .iter()
        .any(|e| e.starts_with("198.51.100.1 is not an address of")));
    // Bound to the host's loopback: the loopback finding, as before.
    let r = with(&bind("127.0.0.1"));
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnLoopback));
    assert!(
        r.diagnosis.line.contains(
            "only (the host's loopback) and proxies to 10.89.0.2:80: connections to 192.0.2.1:9093"
        ) && r.diagnosis.line.ends_with("(drop socat's bind=127.0.0.1)"),
        "{}",
        r.diagnosis.line
    );
    // Bound to the address the client uses, or to every address: socat receives it.
    for ip in ["192.0.2.1", "0.0.0.0"] {
        let r = with(&bind(ip));
        let recv = r.hops.iter().find(|h| h.id == "receiver").unwrap();
        assert_eq!(recv.verdict, Verdict::Ok, "{ip}: {}", recv.summary);
        assert_eq!(r.destination.as_ref().unwrap().via, "proxy", "{ip}");
    }
    // A second map on the same port on another address, listed first: "proxies to" names the
    // map of the address socat listens on (before: the first map of the port, whichever).
    let r = with(&|s| {
        let p = &mut s.proxies[0];
        let mut other = p.maps[0].clone();
        other.listen_ip = Some("203.0.113.9".parse().unwrap());
        other.target = facts::proxies::ProxyTarget::Address {
            target_ip: "10.89.0.99".parse().unwrap(),
        };
        p.maps.insert(0, other);
    });
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnOtherAddress));
    assert!(
        r.diagnosis.line.contains(
            "listens on 198.51.100.1:9093 only (another address of the host) and proxies to 10.89.0.2:80:"
        ),
        "{}",
        r.diagnosis.line
    );
}

#[test]
fn a_host_listener_on_ipv6_only_is_named_for_an_ipv4_client() {
    // The recorded socat (tests/doctor.rs) moved to [::]:9093: with IPV6_V6ONLY, a client over
    // IPv4 finds nothing, said so with socat's own option (before: no_receiver); without it,
    // the dual-stack socket takes IPv4 too.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/lab-socat-on-other-address.json");
    let snap = facts::load(&p).unwrap();
    let on_any6 = |v6only: bool| {
        let mut s = snap.clone();
        let host = s.host;
        let h = s.namespaces.iter_mut().find(|n| n.id == host).unwrap();
        let sock = h
            .listeners
            .iter_mut()
            .find(|s| s.local.port() == 9093)
            .unwrap();
        sock.local = "[::]:9093".parse().unwrap();
        sock.v6only = v6only;
        for m in s.proxies.iter_mut().flat_map(|p| &mut p.maps) {
            m.listen_ip = Some("::".parse().unwrap());
        }
        s.probes.clear();
        replay(&s).unwrap()
    };
    let r = on_any6(true);
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceIpv6Only));
    assert_eq!(r.diagnosis.hop.as_deref(), Some("receiver"));
    for part in [
        "listens on [::]:9093 with IPV6_V6ONLY set, IPv6 only and proxies to 10.89.0.2:80: connections over IPv4 to 192.0.2.1:9093",
        "make it listen on 0.0.0.0:9093 too, or on [::]:9093 with IPV6_V6ONLY off (socat's ipv6only=1 (ipv6-v6only=1): drop it, or give ipv6-v6only=0)",
    ] {
        assert!(r.diagnosis.line.contains(part), "{part}: {}", r.diagnosis.line);
    }
    assert!(r.hops[0]
        .evidence
        .iter()
        .any(|e| e.starts_with("tcp LISTEN [::]:9093 IPV6_V6ONLY owners")));
    let fails = r.hops.iter().filter(|h| h.verdict == Verdict::Fail).count();
    assert_eq!(fails, 1, "one cause, one finding");
    let r = on_any6(false);
    let recv = r.hops.iter().find(|h| h.id == "receiver").unwrap();
    assert_eq!(recv.verdict, Verdict::Ok, "{}", recv.summary);
    assert!(
        recv.summary.contains("proxies to 10.89.0.2:80"),
        "{}",
        recv.summary
    );
}

#[test]
fn a_container_service_on_another_address_or_its_loopback_gets_a_relay() {
    // Inside the container socat listens on 10.89.0.9:80, the DNAT sends to 10.89.0.2:80
    // (recorded by tests/doctor.rs): before, not_listening. On its loopback: as before.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("captures/doctor/lab-service-on-other-container-address.json");
    let mut snap = facts::load(&p).unwrap();
    let r = replay(&snap).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnOtherAddress));
    assert_eq!(r.diagnosis.hop.as_deref(), Some("service"));
    // The service is socat: its own bind= named, as on the host (before: "its listen/bind
    // setting").
    assert!(
        r.diagnosis
            .line
            .ends_with("(socat's bind=10.89.0.9: drop it, or bind=10.89.0.2)"),
        "{}",
        r.diagnosis.line
    );
    let fix = r.diagnosis.fix.unwrap();
    assert!(
        fix.command.contains("proxy 10.89.0.2:80 10.89.0.9:80"),
        "{}",
        fix.command
    );
    let host = snap.host;
    let ctr = snap
        .namespaces
        .iter_mut()
        .find(|n| n.id != host && n.listeners.iter().any(|s| s.local.port() == 80))
        .unwrap();
    ctr.listeners
        .iter_mut()
        .find(|s| s.local.port() == 80)
        .unwrap()
        .local
        .set_ip("127.0.0.1".parse().unwrap());
    let r = replay(&snap).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnLoopback));
    assert!(r.diagnosis.line.contains("its loopback only"));
    assert!(
        r.diagnosis.line.ends_with("(drop socat's bind=127.0.0.1)"),
        "{}",
        r.diagnosis.line
    );
    let fix = r.diagnosis.fix.unwrap();
    assert!(
        fix.command.contains("proxy 10.89.0.2:80 127.0.0.1:80"),
        "{}",
        fix.command
    );
}

/// Rootless Podman, recorded by tests/rootless.rs: rootlessport is followed into the
/// container's namespace (no DNAT, no veth), and the service there is what is judged.
#[test]
fn a_rootless_podman_port_is_followed_through_rootlessport_into_the_container() {
    let load = |name: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        facts::load(&p).unwrap()
    };
    let snap = load("rootless-healthy");
    let r = replay(&snap).unwrap();
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
    let dest = r.destination.as_ref().unwrap();
    assert_eq!(dest.via, "rootlessport");
    assert_eq!(
        SocketAddr::new(dest.addr, dest.port).to_string(),
        "10.0.2.100:80"
    );
    let ctr = dest.netns.clone().unwrap();
    assert!(ctr.starts_with("container:"), "{ctr}");
    // The same host with the service moved to the container's loopback: named there.
    let mut lo = snap.clone();
    let ns = lo.namespaces.iter_mut().find(|n| n.label == ctr).unwrap();
    for s in ns.listeners.iter_mut().filter(|s| s.local.port() == 80) {
        s.local = "127.0.0.1:80".parse().unwrap();
    }
    lo.probes.clear();
    let r = replay(&lo).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnLoopback));
    assert_eq!(r.diagnosis.hop.as_deref(), Some("service"));
    // Without the container's namespace, the path ends at rootlessport, said so.
    let mut gone = snap.clone();
    gone.namespaces.retain(|n| n.label != ctr);
    gone.probes.clear();
    let r = replay(&gone).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::TargetNotFound));
    // Stopped: the user's Podman is asked; its fix runs as that user, in the host namespace.
    let r = replay(&load("rootless-stopped")).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ContainerNotRunning));
    let fix = r.diagnosis.fix.unwrap();
    assert_eq!(fix.argv[0], "nsenter");
    assert_eq!(
        fix.argv[2..7],
        ["runuser", "-u", "nt-rootless", "--", "env"].map(String::from)
    );
    assert!(fix.command.contains(" podman start "), "{}", fix.command);
}

/// Rootless Docker, recorded by tests/rootless.rs: rootlesskit is followed into its child
/// namespace, saved as a snapshot of its own, and judged there as a Docker host.
#[test]
fn a_rootless_docker_port_is_followed_through_rootlesskit_into_its_child_namespace() {
    let load = |name: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("captures/doctor/{name}.json"));
        facts::load(&p).unwrap()
    };
    let snap = load("rootless-docker-healthy");
    let r = replay(&snap).unwrap();
    assert!(r.diagnosis.ok, "{}", r.diagnosis.line);
    assert_eq!(
        r.hops[0].proxy,
        Some(crate::facts::proxies::ProxyKind::Rootlesskit)
    );
    let dest = r.destination.as_ref().unwrap();
    assert_eq!(dest.port, 80);
    let ctr = dest.netns.clone().unwrap();
    assert!(ctr.starts_with("container:"), "{ctr}");
    // The service moved to the container's loopback, in the child namespace's snapshot.
    let mut lo = snap.clone();
    let inner = lo.relayed_host.as_mut().unwrap();
    let ns = inner
        .namespaces
        .iter_mut()
        .find(|n| n.label == ctr)
        .unwrap();
    for s in ns.listeners.iter_mut().filter(|s| s.local.port() == 80) {
        s.local = "127.0.0.1:80".parse().unwrap();
    }
    lo.probes.clear();
    let r = replay(&lo).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ServiceOnLoopback));
    assert_eq!(r.diagnosis.hop.as_deref(), Some("service"));
    // Without the child namespace read, the path ends at rootlesskit: nothing judged past it.
    let mut unread = snap.clone();
    unread.relayed_host = None;
    unread.probes.clear();
    let r = replay(&unread).unwrap();
    assert_eq!(r.destination.as_ref().unwrap().via, "rootlesskit");
    // Stopped: the user's dockerd says so; its fix is the user's docker with its socket.
    let r = replay(&load("rootless-docker-stopped")).unwrap();
    assert_eq!(r.diagnosis.fault, Some(Fault::ContainerNotRunning));
    let fix = r.diagnosis.fix.unwrap();
    assert_eq!(fix.argv[0], "runuser");
    assert!(
        fix.command
            .contains("DOCKER_HOST=unix:///run/user/1002/docker.sock docker start "),
        "{}",
        fix.command
    );
}
