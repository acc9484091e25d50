//! The firewall side of doctor: the NAT explainer's model built from the snapshot's dumps
//! (iptables and ip6tables, both backends, native nftables), judged with its packet walk:
//! which DNAT rule receives the packet, whether filter drops it or its answers, split
//! iptables backends, and stale UDP conntrack entries.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::facts::firewall::local_facts;
use crate::facts::Snapshot;
use crate::nat::explain::describe_match;
use crate::nat::iptables::tokenize;
use crate::nat::model::{Action, Backend, Cond, Dir, Rule, Ruleset, Table};
use crate::nat::walk::{self, LocalFacts, Walk};
use crate::netns::sockets::{Proto, Socket};

use super::fix::Fixer;
use super::path::PathCtx;
use crate::facts::CtEntry;

use super::{Destination, Fault, Hop, Packet};

/// A DNAT rule that publishes a port.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct DnatRule {
    /// Where it lives: iptables-nft, iptables-legacy or nft.
    pub backend: String,
    /// Its table (nat for iptables; the nft table's name).
    pub table: String,
    /// Its chain.
    pub chain: String,
    /// 1-based position in the chain (what `iptables -R CHAIN N` takes).
    pub position: usize,
    /// The rule as the dump shows it.
    pub text: String,
    /// tcp or udp.
    pub proto: Proto,
    /// The published port the packet used.
    pub dport: u16,
    /// New destination address.
    pub to_addr: IpAddr,
    /// New destination port (None keeps it).
    pub to_port: Option<u16>,
}

/// The host's rules (IPv4 and IPv6), the facts the walk needs, and which rules are
/// iptables-legacy's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Firewall {
    /// Every IPv4 table from every backend.
    pub rs: Ruleset,
    /// Every IPv6 table from every backend (ip6tables, nft ip6/inet).
    pub rs6: Ruleset,
    /// Addresses, routes and forwarding of the host for the walk.
    pub facts: LocalFacts,
    /// Where the rules came from, for evidence.
    pub source: String,
    /// Why nothing could be read, when that happened.
    pub error: Option<String>,
    /// Texts of the rules iptables-legacy holds (to name the right tool in fixes).
    legacy: HashSet<String>,
    /// True when iptables-nft (or nft) also holds rules besides the legacy ones.
    other_rules: bool,
    /// net.ipv6.conf.all.forwarding, for walks of IPv6 packets.
    forwarding6: Option<bool>,
}

/// The rule text without a leading `[packets:bytes]` counter.
fn rule_words(text: &str) -> Vec<String> {
    let mut w = tokenize(text).unwrap_or_default();
    if w.first().is_some_and(|t| t.starts_with('[')) {
        w.remove(0);
    }
    w
}

impl Firewall {
    /// The host's firewall as the snapshot recorded it.
    pub(crate) fn from_snapshot(snap: &Snapshot) -> Firewall {
        let host = snap.host();
        let d = &snap.firewall;
        let mut fw = Firewall {
            rs: d.ruleset(false, &host.label),
            rs6: d.ruleset(true, &host.label),
            facts: local_facts(host),
            legacy: d.legacy_rules(),
            forwarding6: host
                .sysctl("net.ipv6.conf.all.forwarding")
                .map(|v| v == "1"),
            ..Default::default()
        };
        fw.source = format!("namespace {}", host.label);
        if d.iptables_nft.is_none() && d.iptables_legacy.is_none() && d.nft_json.is_none() {
            fw.error = Some(d.errors.join("; "));
        }
        fw.other_rules = fw
            .rs
            .tables
            .iter()
            .chain(&fw.rs6.tables)
            .flat_map(|t| t.chains.iter().flat_map(|c| c.rules.iter()))
            .any(|r| !fw.legacy.contains(r.text.trim()));
        fw
    }

    /// The rule set a packet to `dst` crosses.
    pub(crate) fn for_addr(&self, dst: IpAddr) -> &Ruleset {
        if dst.is_ipv6() {
            &self.rs6
        } else {
            &self.rs
        }
    }

    fn tables(&self) -> impl Iterator<Item = &Table> {
        self.rs.tables.iter().chain(&self.rs6.tables)
    }

    /// The rule set of one family (true: IPv6).
    fn family(&self, v6: bool) -> &Ruleset {
        if v6 {
            &self.rs6
        } else {
            &self.rs
        }
    }

    /// The host's facts for a walk toward `dst`: IPv6 forwarding is its own switch.
    pub(crate) fn facts_for(&self, dst: IpAddr) -> std::borrow::Cow<'_, LocalFacts> {
        if dst.is_ipv6() {
            let mut f = self.facts.clone();
            f.forwarding = self.forwarding6;
            std::borrow::Cow::Owned(f)
        } else {
            std::borrow::Cow::Borrowed(&self.facts)
        }
    }
}

/// A DNAT rule reduced to what it publishes: (proto, port ranges, new address, new port).
type Published = (Proto, Vec<(u16, u16)>, IpAddr, Option<u16>);

fn proto_of(rule: &Rule) -> Option<Proto> {
    rule.matches.iter().find_map(|m| match &m.cond {
        Cond::Proto { proto } if !m.negated => match proto.as_str() {
            "tcp" | "6" => Some(Proto::Tcp),
            "udp" | "17" => Some(Proto::Udp),
            _ => None,
        },
        _ => None,
    })
}

fn dports_of(rule: &Rule) -> Vec<(u16, u16)> {
    rule.matches
        .iter()
        .filter(|m| !m.negated)
        .filter_map(|m| match &m.cond {
            Cond::Port {
                dir: Dir::Dst,
                ports,
            } => Some(ports.iter().map(|p| (p.from, p.to)).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Chain name -> the rules that jump or go to it, with the chain each lives in.
type Callers<'a> = std::collections::HashMap<&'a str, Vec<(&'a str, &'a Rule)>>;

/// Who calls each chain of `t`.
fn callers_of(t: &Table) -> Callers<'_> {
    let mut m = Callers::new();
    for c in &t.chains {
        for r in &c.rules {
            if let Action::Jump { chain } | Action::Goto { chain } = &r.action {
                m.entry(chain.as_str())
                    .or_default()
                    .push((c.name.as_str(), r));
            }
        }
    }
    m
}

/// The ports a DNAT rule without `--dport` publishes, from the rules that lead to its chain:
/// kube-proxy matches a NodePort in KUBE-NODEPORTS and DNATs in KUBE-SEP-*, two or three jumps
/// later. A caller that names a destination address (a ClusterIP) is not a port of the host.
fn dports_by_callers(callers: &Callers<'_>, chain: &str) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![chain];
    while let Some(ch) = todo.pop() {
        // Each chain once (jump loops); ten chains up is past any ruleset's nesting.
        if seen.len() > 10 || !seen.insert(ch) {
            continue;
        }
        for (from, r) in callers.get(ch).into_iter().flatten() {
            let to_address = r
                .matches
                .iter()
                .any(|m| !m.negated && matches!(m.cond, Cond::Addr { dir: Dir::Dst, .. }));
            if to_address {
                continue;
            }
            match dports_of(r) {
                ports if ports.is_empty() => todo.push(from),
                ports => out.extend(ports),
            }
        }
    }
    out
}

impl Firewall {
    /// True when both iptables-legacy and another backend hold rules.
    pub(crate) fn split_backends(&self) -> bool {
        !self.legacy.is_empty() && self.other_rules
    }

    /// iptables-legacy, iptables-nft or nft, for a rule of `table`.
    fn backend_of(&self, table: &Table, rule: &Rule) -> String {
        match table.backend {
            Backend::Nftables => "nft".into(),
            Backend::Iptables if self.legacy.contains(rule.text.trim()) => "iptables-legacy".into(),
            Backend::Iptables => "iptables-nft".into(),
        }
    }

    /// The rule at `line` of `chain` in a table called `table` of one family (IPv4 and IPv6
    /// tables share names), with its table and position.
    fn rule_at(
        &self,
        v6: bool,
        table: &str,
        chain: &str,
        line: usize,
    ) -> Option<(&Table, usize, &Rule)> {
        self.family(v6)
            .tables
            .iter()
            .filter(|t| t.name == table)
            .find_map(|t| {
                let c = t.chain(chain)?;
                let i = c.rules.iter().position(|r| r.line == line)?;
                Some((t, i + 1, &c.rules[i]))
            })
    }

    /// Every DNAT rule as (proto, published port ranges, new address, new port).
    fn dnat_rules(&self) -> Vec<Published> {
        self.dnat_rules_of(self.tables())
    }

    fn dnat_rules_of<'a>(&self, tables: impl Iterator<Item = &'a Table>) -> Vec<Published> {
        let mut out = Vec::new();
        for t in tables {
            let mut callers = None;
            for c in &t.chains {
                for r in &c.rules {
                    if let Action::Dnat { to } = &r.action {
                        if let (Some(p), Some(a)) = (proto_of(r), to.addr) {
                            let mut ports = dports_of(r);
                            if ports.is_empty() {
                                let callers = callers.get_or_insert_with(|| callers_of(t));
                                ports = dports_by_callers(callers, &c.name);
                            }
                            out.push((p, ports, a, to.ports.map(|p| p.from)));
                        }
                    }
                }
            }
        }
        out
    }

    /// The published port that sends `proto` to one of `addrs` (to container port `port`).
    pub(crate) fn published_port_of(
        &self,
        proto: Proto,
        addrs: &[IpAddr],
        port: Option<u16>,
    ) -> Option<u16> {
        self.dnat_rules().into_iter().find_map(|(p, ports, a, to)| {
            (p == proto
                && addrs.contains(&a)
                && port.is_none_or(|want| to.or(ports.first().map(|x| x.0)) == Some(want)))
            .then(|| ports.first().map(|x| x.0))
            .flatten()
        })
    }

    /// True when some DNAT rule publishing `proto/port` sends it to one of `addrs`.
    pub(crate) fn dnat_sends_port_to(&self, proto: Proto, port: u16, addrs: &[IpAddr]) -> bool {
        self.dnat_rules().into_iter().any(|(p, ports, a, _)| {
            p == proto && addrs.contains(&a) && ports.iter().any(|(x, y)| *x <= port && port <= *y)
        })
    }

    /// Where the first DNAT rule publishing `proto/port` sends it (address, port).
    pub(crate) fn dnat_target_for_port(
        &self,
        proto: Proto,
        port: u16,
    ) -> Option<(IpAddr, Option<u16>)> {
        self.dnat_rules().into_iter().find_map(|(p, ports, a, to)| {
            (p == proto && ports.iter().any(|(x, y)| *x <= port && port <= *y)).then_some((a, to))
        })
    }

    /// True when some DNAT rule of one family (true: IPv6) publishes `proto/port`, whatever
    /// its other conditions.
    pub(crate) fn has_dnat_for_port_in(&self, v6: bool, proto: Proto, port: u16) -> bool {
        self.dnat_rules_of(self.family(v6).tables.iter())
            .iter()
            .any(|(p, ports, _, _)| {
                *p == proto && ports.iter().any(|(a, b)| *a <= port && port <= *b)
            })
    }

    /// Walk the packet as it first reaches the host.
    pub(crate) fn walk(&self, p: &Packet) -> Walk {
        let packet = walk::Packet {
            proto: p.proto.to_string(),
            src: p.src,
            sport: Some(40000),
            dst: p.dst,
            dport: Some(p.dport),
            in_iface: p.iif.clone(),
            out_iface: None,
            mark: 0,
            state: "NEW".into(),
            from_host: p.hook == "output",
        };
        walk::walk(self.for_addr(p.dst), &packet, &self.facts_for(p.dst))
    }

    /// The DNAT rule the walk went through, if the destination was rewritten.
    pub(crate) fn dnat_in(&self, w: &Walk, p: &Packet) -> Option<DnatRule> {
        let step = w.steps.iter().find(|s| {
            s.rewritten.is_some() && (s.what.starts_with("DNAT") || s.what.starts_with("REDIRECT"))
        })?;
        let to_addr = w.final_packet.dst;
        let to_port = w.final_packet.dport;
        let (table, position, rule) =
            self.rule_at(p.dst.is_ipv6(), &step.table, &step.chain, step.line)?;
        Some(DnatRule {
            backend: self.backend_of(table, rule),
            table: table.name.clone(),
            chain: step.chain.clone(),
            position,
            text: rule.text.trim().to_string(),
            proto: p.proto,
            dport: p.dport,
            to_addr,
            to_port,
        })
    }
}

/// argv that rewrites `rule` to send to `addr:port` (`iptables -t nat -R CHAIN N ...`).
/// None for native nftables rules (they need a handle the dump does not give).
pub(crate) fn dnat_port_fix(rule: &DnatRule, addr: IpAddr, port: u16) -> Option<Vec<String>> {
    if rule.backend == "nft" {
        return None;
    }
    let words = rule_words(&rule.text);
    if words.first().map(String::as_str) != Some("-A") || words.len() < 3 {
        return None;
    }
    let mut argv: Vec<String> = vec![
        tool_of(&rule.backend, rule.to_addr.is_ipv6()).into(),
        "-t".into(),
        rule.table.clone(),
        "-R".into(),
        words[1].clone(),
        rule.position.to_string(),
    ];
    let to = match addr {
        IpAddr::V4(_) => format!("{addr}:{port}"),
        IpAddr::V6(_) => format!("[{addr}]:{port}"),
    };
    let mut it = words[2..].iter();
    while let Some(w) = it.next() {
        argv.push(w.clone());
        if w == "--to-destination" {
            it.next();
            argv.push(to.clone());
        }
    }
    Some(argv)
}

/// The iptables command that edits a rule of `backend` in the IPv4 or IPv6 (`v6`) rules.
fn tool_of(backend: &str, v6: bool) -> &'static str {
    match (backend == "iptables-legacy", v6) {
        (true, false) => "iptables-legacy",
        (true, true) => "ip6tables-legacy",
        (false, false) => "iptables",
        (false, true) => "ip6tables",
    }
}

/// Judge one walk: None when it got through (or stopped for a reason another hop names).
fn judge(fw: &Firewall, w: &Walk, dir: &str, fixer: &Fixer) -> Option<Hop> {
    if w.verdict != "dropped" && w.verdict != "rejected" {
        return None;
    }
    // Forwarding off: the ip_forward hop names it; the last rule the packet crossed (often the
    // engine's own DNAT) is not a second fault.
    if w.steps.last().is_some_and(|s| s.chain == "routing") {
        return None;
    }
    let last = w.steps.iter().rev().find(|s| !s.table.is_empty())?;
    let v6 = w.packet.dst.is_ipv6();
    if last.line == 0 {
        // A chain policy.
        let t = fw
            .family(v6)
            .tables
            .iter()
            .find(|t| t.name == last.table && t.chain(&last.chain).is_some());
        let policy = t
            .and_then(|t| t.chain(&last.chain))
            .and_then(|c| c.policy.as_ref())
            .map(|p| p.verdict.clone())
            .unwrap_or_else(|| "DROP".into());
        let nft = t.is_some_and(|t| t.backend == Backend::Nftables);
        let legacy = t.is_some_and(|t| {
            t.backend == Backend::Iptables
                && t.chains
                    .iter()
                    .flat_map(|c| &c.rules)
                    .any(|r| fw.legacy.contains(r.text.trim()))
                && !t
                    .chains
                    .iter()
                    .flat_map(|c| &c.rules)
                    .any(|r| !fw.legacy.contains(r.text.trim()))
        });
        let fault = if last.chain.eq_ignore_ascii_case("forward") {
            Fault::ForwardPolicyDrop
        } else {
            Fault::FirewallDrop
        };
        let fix = match (nft, t) {
            (true, Some(t)) => fixer.fix_owned(
                "accept forwarded connections that a DNAT rule published, and their answers",
                vec![
                    "nft".into(),
                    "add".into(),
                    "rule".into(),
                    t.family.clone(),
                    t.name.clone(),
                    last.chain.clone(),
                    // ct status is per connection: it matches the answers too.
                    "ct".into(),
                    "status".into(),
                    "dnat".into(),
                    "accept".into(),
                ],
                false,
            ),
            _ => fixer.fix(
                "accept forwarded connections that a DNAT rule published, and their answers (appended: user chains still run first)",
                &[
                    tool_of(if legacy { "iptables-legacy" } else { "iptables-nft" }, v6),
                    "-A",
                    &last.chain,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT,RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ],
            ),
        };
        return Some(
            Hop::fail(
                "firewall",
                "firewall",
                fault,
                format!(
                    "the {} {} policy is {policy} and no rule accepts {dir} ({})",
                    last.table, last.chain, w.packet
                ),
            )
            .with_evidence(w.summary.clone())
            .with_fix(Some(fix)),
        );
    }
    let (table, position, rule) = fw.rule_at(v6, &last.table, &last.chain, last.line)?;
    let backend = fw.backend_of(table, rule);
    let words = rule_words(&rule.text);
    let fix = if backend == "nft" {
        // nft rules come from `nft -j`, where a rule's line is its handle.
        Some(fixer.fix_owned(
            &format!("delete that rule from {}", last.chain),
            vec![
                "nft".into(),
                "delete".into(),
                "rule".into(),
                table.family.clone(),
                table.name.clone(),
                last.chain.clone(),
                "handle".into(),
                rule.line.to_string(),
            ],
            false,
        ))
    } else {
        (words.first().map(String::as_str) == Some("-A")).then(|| {
            let mut argv: Vec<String> = vec![tool_of(&backend, v6).into()];
            if table.name != "filter" {
                argv.extend(["-t".to_string(), table.name.clone()]);
            }
            argv.push("-D".into());
            argv.extend(words[1..].iter().cloned());
            fixer.fix_owned(
                &format!("delete that rule from {}", last.chain),
                argv,
                false,
            )
        })
    };
    let user = last.chain.to_ascii_uppercase().ends_with("-USER");
    // nft rules read from JSON have no nft-syntax text: say their conditions in words.
    let shown = if backend == "nft" && !rule.matches.is_empty() {
        let conds: Vec<String> = rule.matches.iter().map(describe_match).collect();
        format!(
            "{} ({})",
            conds.join(", "),
            if w.verdict == "rejected" {
                "reject"
            } else {
                "drop"
            }
        )
    } else {
        rule.text.trim().to_string()
    };
    Some(
        Hop::fail(
            "firewall",
            "firewall",
            Fault::FirewallDrop,
            format!(
                "a rule {} {dir} in {} {}{}: {}",
                if w.verdict == "rejected" {
                    "rejects"
                } else {
                    "drops"
                },
                table.name,
                last.chain,
                if user { " (the user chain)" } else { "" },
                shown
            ),
        )
        .with_evidence(format!(
            "{backend}, {} {} rule {position} (line {})",
            table.name, last.chain, last.line
        ))
        .with_evidence(w.summary.clone())
        .with_fix(fix),
    )
}

/// The filter verdicts on the path: the first packet, and (when forwarded) its answers.
pub(crate) fn firewall_hops(
    fw: &Firewall,
    there: &Walk,
    forwarded: bool,
    fixer: &Fixer,
    listeners: &[Socket],
) -> Vec<Hop> {
    if let Some(h) = judge(fw, there, "the first packet", fixer) {
        return vec![h];
    }
    if fw.for_addr(there.final_packet.dst).tables.is_empty() {
        return Vec::new();
    }
    let mut evidence = vec![format!("first packet: {}", there.outcome(listeners))];
    if forwarded {
        let f = &there.final_packet;
        let answer = walk::Packet {
            proto: f.proto.clone(),
            src: f.dst,
            sport: f.dport,
            dst: f.src,
            dport: f.sport,
            in_iface: f.out_iface.clone(),
            out_iface: None,
            mark: 0,
            state: "ESTABLISHED".into(),
            from_host: false,
        };
        let back = walk::walk(fw.for_addr(answer.dst), &answer, &fw.facts_for(answer.dst));
        if let Some(h) = judge(fw, &back, "the answers", fixer) {
            return vec![h];
        }
        evidence.push(format!("answers: {}", back.summary));
    }
    let mut hop = Hop::ok(
        "firewall",
        "firewall",
        if forwarded {
            "the rules let the first packet and the answers through"
        } else {
            "the rules let the packet through"
        },
    );
    hop.evidence = evidence;
    vec![hop]
}

/// Stale UDP conntrack entries: an entry for the published port whose reply comes from
/// somewhere other than the current destination (made before the DNAT rule, or for an
/// old container) keeps every later datagram of that flow going there.
pub(crate) fn conntrack_hop(cx: &PathCtx, dest: &Destination) -> Hop {
    let p = cx.packet;
    let port = p.dport.to_string();
    let Some(all) = &cx.snap.conntrack else {
        return Hop::ok(
            "conntrack",
            "conntrack",
            "not checked: the conntrack table could not be read (ctnetlink dump failed)",
        );
    };
    let entries = entries_for(all, Proto::Udp, p);
    // An entry is stale when its reply does not come from where that same packet would be
    // sent today (walked through today's rules): a localhost client of a userland proxy is
    // answered by the proxy's socket, which is right; a client whose entry predates the DNAT
    // rule is answered by the host, which is not.
    let stale: Vec<&CtEntry> = entries
        .iter()
        .filter(|e| {
            let expected = expected_reply(cx, e);
            expected.is_some_and(|(a, port)| e.reply_src != Some(a) || e.reply_sport != Some(port))
        })
        .copied()
        .collect();
    if stale.is_empty() {
        return Hop::ok(
            "conntrack",
            "conntrack",
            format!(
                "{} UDP entr{} for port {port}, none stale",
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" }
            ),
        );
    }
    let mut hop = Hop::fail(
        "conntrack",
        "conntrack",
        Fault::StaleConntrack,
        format!(
            "{} stale UDP conntrack entr{} for port {port}: answers come from {}, not {}:{}, so datagrams of that flow skip the DNAT",
            stale.len(),
            if stale.len() == 1 { "y" } else { "ies" },
            match (stale[0].reply_src, stale[0].reply_sport) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                _ => "elsewhere".into(),
            },
            dest.addr,
            dest.port
        ),
    )
    .with_fix(stale_fix(cx, &port, stale[0], dest));
    hop.evidence = stale.iter().take(5).map(|e| e.text.clone()).collect();
    hop
}

/// The entries of `proto` for the packet's port, of the path's family only (conntrack lists
/// IPv4 and IPv6, TCP and UDP together).
fn entries_for<'a>(all: &'a [CtEntry], proto: Proto, p: &Packet) -> Vec<&'a CtEntry> {
    all.iter()
        .filter(|e| e.proto == proto && e.dport == Some(p.dport))
        .filter(|e| e.dst.is_none_or(|d| d.is_ipv6() == p.dst.is_ipv6()))
        .collect()
}

/// TCP entries for the port, as evidence only (None when there are none, or conntrack was
/// not read): each connection gets an entry of its own, so an entry made before a rule
/// changed misdirects nothing new, and none is judged stale. Their states and where their
/// answers come from say what real clients met.
pub(crate) fn tcp_conntrack_hop(cx: &PathCtx) -> Option<Hop> {
    let p = cx.packet;
    let entries = entries_for(cx.snap.conntrack.as_deref()?, Proto::Tcp, p);
    if entries.is_empty() {
        return None;
    }
    // Each distinct value with how often it occurs, in order of first sight.
    let tally = |items: Vec<String>| {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for i in items {
            match seen.iter_mut().find(|(s, _)| *s == i) {
                Some((_, n)) => *n += 1,
                None => seen.push((i, 1)),
            }
        }
        seen
    };
    let states = tally(
        entries
            .iter()
            .map(|e| {
                e.tcp_state
                    .map(|s| s.as_str())
                    .unwrap_or("no state")
                    .to_string()
            })
            .collect(),
    )
    .iter()
    .map(|(s, n)| format!("{n} {s}"))
    .collect::<Vec<_>>()
    .join(", ");
    let from = tally(
        entries
            .iter()
            .map(|e| match (e.reply_src, e.reply_sport) {
                (Some(a), Some(port)) => std::net::SocketAddr::new(a, port).to_string(),
                _ => "?".into(),
            })
            .collect(),
    );
    let from = match from.as_slice() {
        [(one, _)] => one.clone(),
        many => many
            .iter()
            .map(|(s, n)| format!("{s} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut hop = Hop::ok(
        "conntrack",
        "conntrack",
        format!(
            "{} TCP entr{} for port {} ({states}), answered from {from}: evidence, not judged (each connection has an entry of its own)",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" },
            p.dport
        ),
    );
    hop.evidence = entries.iter().take(5).map(|e| e.text.clone()).collect();
    Some(hop)
}

/// Where today's rules send the packet of entry `e`: the DNAT target, or its own destination.
fn expected_reply(cx: &PathCtx, e: &CtEntry) -> Option<(IpAddr, u16)> {
    let (src, dst, dport) = (e.src?, e.dst?, e.dport?);
    let host = cx.host;
    let local = |a: IpAddr| a.is_loopback() || host.has_address(a);
    let iif = if local(src) {
        None
    } else {
        host.route_to(src)
            .ok()
            .and_then(|r| r.oif)
            .and_then(|i| host.link(i))
            .map(|l| l.name.clone())
    };
    let packet = Packet {
        proto: Proto::Udp,
        src,
        dst,
        dport,
        hook: if local(src) { "output" } else { "prerouting" }.into(),
        iif,
        src_assumed: false,
    };
    let w = cx.fw.walk(&packet);
    Some(match cx.fw.dnat_in(&w, &packet) {
        Some(rule) => (rule.to_addr, rule.to_port.unwrap_or(dport)),
        None => (dst, dport),
    })
}

/// Delete only the stale flows: those answered from the old place, never every flow of the port.
fn stale_fix(cx: &PathCtx, port: &str, e: &CtEntry, dest: &Destination) -> Option<super::Fix> {
    let (from, sport) = (e.reply_src?, e.reply_sport?);
    let v6 = from.is_ipv6();
    let (from, sport) = (from.to_string(), sport.to_string());
    // conntrack -D works on IPv4 entries unless told the family.
    let mut argv = vec!["conntrack", "-D"];
    if v6 {
        argv.extend(["-f", "ipv6"]);
    }
    argv.extend([
        "-p",
        "udp",
        "--orig-port-dst",
        port,
        "--reply-src",
        &from,
        "--reply-port-src",
        &sport,
    ]);
    Some(cx.fixer.fix(
        &format!(
            "delete the UDP entries for port {port} answered from {from}:{sport} (live flows to {}:{} stay)",
            dest.addr, dest.port
        ),
        &argv,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_port_fix_replaces_destination() {
        let r = DnatRule {
            backend: "iptables-nft".into(),
            table: "nat".into(),
            chain: "NETTOOL".into(),
            position: 2,
            text: "-A NETTOOL ! -i br0 -p tcp -m tcp --dport 8080 -m comment --comment \"web port\" -j DNAT --to-destination 10.0.0.2:81".into(),
            proto: Proto::Tcp,
            dport: 8080,
            to_addr: "10.0.0.2".parse().unwrap(),
            to_port: Some(81),
        };
        let argv = dnat_port_fix(&r, r.to_addr, 80).unwrap();
        assert_eq!(
            argv.join(" "),
            "iptables -t nat -R NETTOOL 2 ! -i br0 -p tcp -m tcp --dport 8080 -m comment --comment web port -j DNAT --to-destination 10.0.0.2:80"
        );
        let nft = DnatRule {
            backend: "nft".into(),
            ..r
        };
        assert_eq!(dnat_port_fix(&nft, nft.to_addr, 80), None);
    }
}
