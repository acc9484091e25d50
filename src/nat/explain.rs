//! The ruleset in plain words: published ports, source NAT, drops, unreachable chains,
//! and which known system (Docker, CNI portmap, kube-proxy, netavark, nettool labs) wrote it.

mod paths;
mod recognise;
mod verify;
mod words;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use super::model::*;
use super::reach::{HostModel, Probe};
use super::walk::RuleRef;

use paths::Walker;
pub use recognise::{kube_services, recognise};
use verify::{flows, verify_drop, verify_published};
pub(crate) use words::describe_action;
pub use words::{describe_match, ports_str};

/// Who wrote a chain, judged by its name (and its table's name for nftables).
pub fn owner_of(table: &str, chain: &str) -> Option<&'static str> {
    let t = table.to_ascii_lowercase();
    if t.starts_with("docker") {
        return Some("docker");
    }
    if t.starts_with("netavark") {
        return Some("netavark");
    }
    if t.starts_with("nettool") {
        return Some("nettool");
    }
    if t.starts_with("kube") {
        return Some("kube-proxy");
    }
    if chain.starts_with("DOCKER_") {
        Some("docker-dns")
    } else if chain.starts_with("DOCKER") {
        Some("docker")
    } else if chain.starts_with("CNI-") {
        Some("cni-portmap")
    } else if chain.starts_with("KUBE-") {
        Some("kube-proxy")
    } else if chain.starts_with("NETAVARK") {
        Some("netavark")
    } else if chain.starts_with("NETTOOL") {
        Some("nettool")
    } else {
        None
    }
}

/// A system whose rules were recognised.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recognised {
    /// docker, docker-dns, cni-portmap, kube-proxy, netavark, nettool.
    pub system: String,
    /// In words: which variant and what shows it.
    pub detail: String,
}

/// One way into a rule: from which hook, under which conditions.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// The hook the path starts at.
    pub hook: Hook,
    /// Chains passed through, "TABLE CHAIN:LINE" each.
    pub path: Vec<String>,
    /// Every condition on the way, in words.
    pub conditions: Vec<String>,
    /// Where the traffic comes from, in words.
    pub from: String,
    /// Fraction of matching traffic that takes this path (probability branches), 1.0 when certain.
    pub share: f64,
    /// The conditions as data (the probes are built from them).
    #[serde(skip)]
    pub conds: Vec<Match>,
}

/// Where a published port sends traffic.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Target {
    /// "172.17.0.2:80", or "this host port 3128" for REDIRECT.
    pub to: String,
    /// Target address when known.
    pub addr: Option<IpAddr>,
    /// Fraction of the connections that go here (kube-proxy endpoints).
    pub share: f64,
    /// Container or pod name when known.
    pub name: Option<String>,
    /// Table of the DNAT rule.
    pub table: String,
    /// Chain of the DNAT rule.
    pub chain: String,
    /// Line of the DNAT rule.
    pub line: usize,
    /// Target port when the rule names one (or keeps the published one).
    pub port: Option<u16>,
    /// True when no walked packet reaches this rule.
    pub shadowed: bool,
    /// The other DNAT rule that took the walked packets instead, when one did.
    pub shadowed_by: Option<RuleRef>,
    /// The DNAT rule's [packets, bytes] counters, when the rules were read with them (live).
    pub counters: Option<[u64; 2]>,
}

/// A port (or address) that destination NAT sends somewhere else.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublishedPort {
    /// tcp, udp, sctp or "any".
    pub proto: String,
    /// "any local address", an address, or a network.
    pub host: String,
    /// "8080", "8000-8100", "8080,8081" or "any".
    pub host_port: String,
    /// The host address as data: None for any (local) address.
    pub host_addr: Option<IpAddr>,
    /// The host ports as data (empty: any).
    pub host_ports: Vec<PortRange>,
    /// An IPv6 mapping (ip6 table or IPv6 target).
    pub ipv6: bool,
    /// Where it goes (several for load-balanced services).
    pub targets: Vec<Target>,
    /// Each way in, with where it applies from.
    pub entries: Vec<Entry>,
    /// Which system wrote it.
    pub owner: Option<String>,
    /// Service name from a kube-proxy comment ("ns/svc:port").
    pub service: Option<String>,
    /// The whole thing in one sentence, from the walks below.
    pub sentence: String,
    /// Representative packets walked through the rules (from outside, from each container
    /// network, from this host) and what happened to each.
    pub probes: Vec<Probe>,
    /// The same walks in words, one line each.
    pub reach: Vec<String>,
}

/// A source NAT rule (SNAT or MASQUERADE) and when it applies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceNat {
    /// "MASQUERADE" or "SNAT to X".
    pub action: String,
    /// Conditions in words.
    pub when: Vec<String>,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// Line.
    pub line: usize,
    /// Which system wrote it.
    pub owner: Option<String>,
    /// In one sentence.
    pub sentence: String,
}

/// A rule (or a policy) that drops or rejects.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DropRule {
    /// DROP, REJECT or "policy DROP".
    pub action: String,
    /// Hook it applies at (the first one it is reached from).
    pub hook: Hook,
    /// Every hook it is reached from.
    pub hooks: Vec<Hook>,
    /// Conditions in words (empty: everything reaching it).
    pub when: Vec<String>,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// Line (of the rule or the chain declaration).
    pub line: usize,
    /// Comment on the rule.
    pub comment: Option<String>,
    /// Which system wrote it.
    pub owner: Option<String>,
    /// A packet that meets the conditions, walked: does it really end here?
    pub probe: Option<Probe>,
    /// The same packet as an ESTABLISHED connection, when its fate differs (accepted before).
    pub established: Option<Probe>,
    /// What the walks say about this rule, in words.
    pub verified: String,
    /// The conditions as data.
    #[serde(skip)]
    pub conds: Vec<Match>,
    /// Its table is IPv6 only.
    #[serde(skip)]
    pub v6: bool,
}

/// What happens to a whole class of traffic (into, out of, between container networks).
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// inbound (outside to a container, unpublished port), outbound, between (two networks).
    pub kind: String,
    /// The network the traffic starts from ("outside" for inbound).
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// open (forwarded or delivered) or closed (dropped, rejected, no route).
    pub verdict: String,
    /// The walk.
    pub probe: Probe,
    /// In one sentence.
    pub sentence: String,
}

/// A chain or rule worth a look: never reached, jumping nowhere, or with unknown matches.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Oddity {
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// Line.
    pub line: usize,
    /// What is odd.
    pub what: String,
}

/// A kube-proxy service with its endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Service {
    /// "ns/name:port" from the comments.
    pub name: String,
    /// The KUBE-SVC chain.
    pub chain: String,
    /// (endpoint, share) in chain order.
    pub endpoints: Vec<(String, f64)>,
}

/// Everything `explain-nat` says about a ruleset.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Where the rules came from.
    pub source: String,
    /// Number of tables.
    pub tables: usize,
    /// Number of rules.
    pub rules: usize,
    /// Known systems found.
    pub recognised: Vec<Recognised>,
    /// Destination NAT: published ports and services.
    pub published: Vec<PublishedPort>,
    /// kube-proxy services with endpoints and shares.
    pub services: Vec<Service>,
    /// Source NAT.
    pub source_nat: Vec<SourceNat>,
    /// Drops and rejects.
    pub drops: Vec<DropRule>,
    /// Open and closed classes of traffic, walked (into, out of and between container networks).
    pub flows: Vec<Flow>,
    /// The host the representative packets were walked through.
    pub host: Option<HostModel>,
    /// Forwarding allowed to a specific address and port (routed mode, or the filter side of a DNAT).
    pub forward_accepts: Vec<SourceNat>,
    /// Chains never reached from a hook.
    pub unreached: Vec<Oddity>,
    /// Jumps to chains that do not exist.
    pub dangling: Vec<Oddity>,
    /// Rules with matches we cannot evaluate.
    pub unknown: Vec<Oddity>,
    /// Lines that could not be loaded.
    pub problems: Vec<Problem>,
    /// Warnings from loading.
    pub warnings: Vec<String>,
}

/// Summarise a ruleset (no container names).
pub fn summarize(rs: &Ruleset) -> Summary {
    summarize_with(rs, &HashMap::new())
}

/// Summarise a ruleset, naming the containers behind addresses found in `names`.
pub fn summarize_with(rs: &Ruleset, names: &HashMap<IpAddr, String>) -> Summary {
    summarize_on(rs, names, None)
}

/// Summarise a ruleset; the representative packets are walked with `facts` (a live namespace's
/// addresses and routes) or, without them, through a host made up from the rules.
pub fn summarize_on(
    rs: &Ruleset,
    names: &HashMap<IpAddr, String>,
    facts: Option<&super::walk::LocalFacts>,
) -> Summary {
    let mut w = Walker {
        rs,
        names,
        reached: HashSet::new(),
        published: BTreeMap::new(),
        order: Vec::new(),
        snat: Vec::new(),
        drops: Vec::new(),
        seen_snat: HashSet::new(),
        seen_drop: HashSet::new(),
        drop_index: HashMap::new(),
        dangling: Vec::new(),
        accepts: Vec::new(),
        seen_accept: HashSet::new(),
        visits: 0,
        notes: BTreeMap::new(),
    };
    // Base chains in kernel order, so output follows the packet.
    let mut bases: Vec<(usize, usize, BaseChain)> = Vec::new();
    for (ti, t) in rs.tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            if let Some(b) = c.base {
                bases.push((ti, ci, b));
            }
        }
    }
    bases.sort_by_key(|(_, _, b)| (b.hook, b.priority));
    let mut drops_policy = Vec::new();
    for &(ti, ci, b) in &bases {
        let mut stack = Vec::new();
        w.visit(ti, ci, b.hook, &mut stack);
        let c = &rs.tables[ti].chains[ci];
        if let Some(p) = &c.policy {
            if p.verdict.eq_ignore_ascii_case("drop") {
                drops_policy.push(DropRule {
                    action: "policy DROP".into(),
                    hook: b.hook,
                    hooks: vec![b.hook],
                    when: vec!["everything no rule accepted".into()],
                    table: rs.tables[ti].name.clone(),
                    chain: c.name.clone(),
                    line: c.line,
                    comment: None,
                    owner: None,
                    probe: None,
                    established: None,
                    verified: String::new(),
                    conds: Vec::new(),
                    v6: rs.tables[ti].family == "ip6",
                });
            }
        }
    }
    let mut published: Vec<PublishedPort> = Vec::new();
    for k in &w.order {
        // Its sentence is written once its packets are walked (verify_published).
        if let Some(p) = w.published.remove(k) {
            published.push(p);
        }
    }
    let mut unreached = Vec::new();
    let mut unknown = Vec::new();
    let referenced_by_vmap: HashSet<(usize, &str)> = HashSet::new();
    for (ti, t) in rs.tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            if c.base.is_none()
                && !w.reached.contains(&(ti, ci))
                && !referenced_by_vmap.contains(&(ti, c.name.as_str()))
            {
                unreached.push(Oddity {
                    table: t.name.clone(),
                    chain: c.name.clone(),
                    line: c.line,
                    what: if c.rules.is_empty() {
                        "empty and never reached from a hook".into()
                    } else {
                        format!("{} rule(s), never reached from a hook", c.rules.len())
                    },
                });
            }
            for r in &c.rules {
                for m in &r.matches {
                    let unevaluated = matches!(
                        m.cond,
                        Cond::Set { .. } | Cond::NftSet { elements: None, .. }
                    );
                    if unevaluated {
                        unknown.push(Oddity {
                            table: t.name.clone(),
                            chain: c.name.clone(),
                            line: r.line,
                            what: describe_match(m),
                        });
                    }
                    if let Cond::Unknown { text } = &m.cond {
                        unknown.push(Oddity {
                            table: t.name.clone(),
                            chain: c.name.clone(),
                            line: r.line,
                            what: format!(
                                "{}{text}: unknown, may or may not match",
                                if m.negated { "! " } else { "" }
                            ),
                        });
                    }
                }
                if let Action::Other { text, .. } = &r.action {
                    if text.starts_with("unknown") {
                        unknown.push(Oddity {
                            table: t.name.clone(),
                            chain: c.name.clone(),
                            line: r.line,
                            what: text.clone(),
                        });
                    }
                }
            }
        }
    }
    let mut drops = drops_policy;
    drops.extend(w.drops);
    let notes: Vec<String> = std::mem::take(&mut w.notes).into_values().collect();
    let model = match facts {
        Some(f) => HostModel::from_facts(rs, f),
        None => HostModel::invent(rs),
    };
    for p in &mut published {
        verify_published(rs, &model, p);
    }
    for d in &mut drops {
        verify_drop(rs, &model, d);
    }
    let flows = flows(rs, &model);
    Summary {
        source: rs.source.clone(),
        tables: rs.tables.len(),
        rules: rs.rule_count(),
        recognised: recognise(rs),
        services: kube_services(rs),
        published,
        source_nat: w.snat,
        drops,
        flows,
        host: Some(model),
        forward_accepts: w.accepts,
        unreached,
        dangling: w.dangling,
        unknown,
        problems: rs.problems.clone(),
        warnings: rs.warnings.iter().cloned().chain(notes).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::iptables;

    const DOCKER: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
";

    #[test]
    fn docker_published_port_in_words() {
        let rs = iptables::parse(DOCKER);
        let mut names = HashMap::new();
        names.insert("172.17.0.2".parse().unwrap(), "container web".to_string());
        let s = summarize_with(&rs, &names);
        assert_eq!(s.published.len(), 1);
        let p = &s.published[0];
        assert_eq!(p.proto, "tcp");
        assert_eq!(p.host, "any local address");
        assert_eq!(p.host_port, "8080");
        assert_eq!(p.targets[0].to, "172.17.0.2:80");
        assert_eq!(p.targets[0].line, 11);
        assert_eq!(
            p.sentence,
            "TCP to any local address port 8080 is sent to 172.17.0.2:80 (container web): reached from outside, from this host to 198.51.100.10; not from containers on docker0 (not translated: delivered to this host), not from this host to 127.0.0.1 (not translated: delivered to this host)."
        );
        assert_eq!(s.source_nat.len(), 1);
        assert!(
            s.source_nat[0].sentence.contains("172.17.0.0/16"),
            "{:?}",
            s.source_nat
        );
        assert_eq!(s.recognised[0].system, "docker");
    }

    #[test]
    fn unreached_and_dangling() {
        let rs = iptables::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:LONELY - [0:0]\n-A INPUT -j NOWHERE\n-A LONELY -j DROP\nCOMMIT\n",
        );
        let s = summarize(&rs);
        assert_eq!(s.unreached.len(), 1);
        assert_eq!(s.unreached[0].chain, "LONELY");
        assert_eq!(s.dangling.len(), 1);
        assert_eq!(s.dangling[0].line, 6);
        assert!(s
            .drops
            .iter()
            .any(|d| d.action == "policy DROP" && d.chain == "FORWARD"));
    }

    #[test]
    fn kube_shares() {
        let rs = iptables::parse("*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-SEP-3 - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-A
-A KUBE-SVC-A -m comment --comment \"kube-system/dns:tcp\" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1
-A KUBE-SVC-A -m comment --comment \"kube-system/dns:tcp\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2
-A KUBE-SVC-A -m comment --comment \"kube-system/dns:tcp\" -j KUBE-SEP-3
-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:53
-A KUBE-SEP-2 -p tcp -m tcp -j DNAT --to-destination 10.0.0.2:53
-A KUBE-SEP-3 -p tcp -m tcp -j DNAT --to-destination 10.0.0.3:53
COMMIT
");
        let s = summarize(&rs);
        assert_eq!(s.services.len(), 1);
        for (_, share) in &s.services[0].endpoints {
            assert!((share - 1.0 / 3.0).abs() < 1e-6);
        }
        assert_eq!(s.published.len(), 1);
        let p = &s.published[0];
        assert_eq!(p.targets.len(), 3);
        assert_eq!(p.host, "10.96.0.10");
        assert!(
            (p.targets[2].share - 1.0 / 3.0).abs() < 1e-6,
            "{:?}",
            p.targets
        );
        assert_eq!(p.service.as_deref(), Some("kube-system/dns:tcp"));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::nat::{iptables, walk};

    #[test]
    fn netavark_and_nettool_recognised() {
        let rs = iptables::parse("*nat\n:PREROUTING ACCEPT [0:0]\n:NETAVARK-HOSTPORT-DNAT - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT\n-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80\nCOMMIT\n");
        let s = summarize(&rs);
        assert_eq!(s.recognised[0].system, "netavark");
        assert_eq!(s.published[0].owner.as_deref(), Some("netavark"));
    }

    #[test]
    fn dash_s_with_counters_and_ip6() {
        // `iptables -S -v` style counters, and an ip6tables listing.
        let rs = iptables::parse_rules(
            "-P PREROUTING ACCEPT -c 5 300\n-N DOCKER\n-A PREROUTING -m addrtype --dst-type LOCAL -c 2 120 -j DOCKER\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00::2]:80\n",
            "nat",
        );
        assert!(rs.problems.is_empty(), "{:?}", rs.problems);
        let t = &rs.tables[0];
        assert_eq!(t.family, "ip6");
        assert_eq!(
            t.chain("PREROUTING").unwrap().rules[0].counters,
            Some([2, 120])
        );
        let s = summarize(&rs);
        assert_eq!(s.published[0].targets[0].to, "[fd00::2]:80");
        let p =
            walk::Packet::parse("tcp [2001:db8::5]:40000 -> [2001:db8::1]:8080 in eth0").unwrap();
        let w = walk::walk(&rs, &p, &walk::LocalFacts::default());
        assert_eq!(w.final_tuple, "tcp [2001:db8::5]:40000 -> [fd00::2]:80");
        // An IPv4 packet does not meet ip6 tables.
        let p = walk::Packet::parse("tcp 192.0.2.5:40000 -> 192.0.2.1:8080 in eth0").unwrap();
        let w = walk::walk(&rs, &p, &walk::LocalFacts::default());
        assert_eq!(w.final_tuple, "tcp 192.0.2.5:40000 -> 192.0.2.1:8080");
    }

    #[test]
    fn goto_and_wildcards_in_walk() {
        let rs = iptables::parse("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CHECK - [0:0]\n:LAST - [0:0]\n-A INPUT -i veth+ -g CHECK\n-A INPUT -j ACCEPT\n-A CHECK -p udp -j RETURN\n-A CHECK -p tcp -j LAST\n-A LAST -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset\nCOMMIT\n");
        let facts = walk::LocalFacts {
            addrs: vec![("10.0.0.1".parse().unwrap(), "veth1".into())],
            ..Default::default()
        };
        // From veth1: goto CHECK, tcp -> LAST -> REJECT.
        let p = walk::Packet::parse("tcp 10.0.0.2:1 -> 10.0.0.1:22 in veth1").unwrap();
        let w = walk::walk(&rs, &p, &facts);
        assert_eq!(w.verdict, "rejected", "{w:#?}");
        // udp: RETURN from a goto'd chain returns past INPUT's ACCEPT to the policy: DROP.
        let p = walk::Packet::parse("udp 10.0.0.2:1 -> 10.0.0.1:53 in veth1").unwrap();
        let w = walk::walk(&rs, &p, &facts);
        assert_eq!(w.verdict, "dropped", "{w:#?}");
        // from eth0: no goto, INPUT's ACCEPT.
        let p = walk::Packet::parse("udp 10.0.0.2:1 -> 10.0.0.1:53 in eth0").unwrap();
        assert_eq!(walk::walk(&rs, &p, &facts).verdict, "accepted-local");
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::*;
    use crate::nat::{iptables, walk};

    #[test]
    fn jump_loops_stay_bounded() {
        // The kernel refuses loops, but a file can hold one: both the summary and the walk end.
        let mut text =
            String::from("*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n");
        for _ in 0..200 {
            text.push_str("-A A -j B\n-A B -j A\n");
        }
        text.push_str("COMMIT\n");
        let rs = iptables::parse(&text);
        let s = summarize(&rs);
        assert!(s.unreached.is_empty());
        let p = walk::Packet::parse("tcp 10.0.0.2:1 -> 10.0.0.1:22 in eth0").unwrap();
        let w = walk::walk(&rs, &p, &walk::LocalFacts::default());
        assert_eq!(w.verdict, "accepted-local");
        assert!(
            w.assumptions
                .iter()
                .any(|a| a.contains("budget") || a.contains("too deep")),
            "{:?}",
            w.assumptions
        );
    }
}
