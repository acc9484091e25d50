//! The ruleset in plain words: published ports, source NAT, drops, unreachable chains,
//! and which known system (Docker, CNI portmap, kube-proxy, netavark, nettool labs) wrote it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use super::model::*;
use super::reach::{self, HostModel, Probe};
use super::walk::RuleRef;

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

/// Plain-word description of one condition.
pub fn describe_match(m: &Match) -> String {
    let not = if m.negated { "not " } else { "" };
    match &m.cond {
        Cond::Proto { proto } => format!("{not}{proto}"),
        Cond::Addr { dir, net } => format!("{not}{} {}", dir_word(*dir), net_str(net)),
        Cond::AddrRange { dir, from, to } => {
            format!("{} {not}in {from}-{to}", dir_word(*dir))
        }
        Cond::InIface { name } => {
            format!("{}arriving on {name}", if m.negated { "not " } else { "" })
        }
        Cond::OutIface { name } => {
            format!("{}leaving by {name}", if m.negated { "not " } else { "" })
        }
        Cond::Port { dir, ports } => format!(
            "{} port {not}{}",
            if *dir == Dir::Src {
                "source"
            } else {
                "destination"
            },
            ports_str(ports)
        ),
        Cond::CtState { states } => format!("connection state {not}{}", states.join("/")),
        Cond::AddrType { dir, types } => format!(
            "{} {}a {} address",
            dir_word(*dir),
            if m.negated { "not " } else { "" },
            types.join("/").to_ascii_lowercase()
        ),
        Cond::Mark { value, mask } => {
            if *mask == u32::MAX {
                format!("mark {not}{value:#x}")
            } else {
                format!(
                    "mark & {mask:#x} {}= {value:#x}",
                    if m.negated { "!" } else { "=" }
                )
            }
        }
        Cond::Set { name, dirs } => format!(
            "{} {not}in ipset {name} (an iptables dump does not carry the set's members, so this cannot be evaluated: see `ipset list {name}`)",
            dirs.iter()
                .map(|d| dir_word(*d))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Cond::NftSet {
            name,
            fields,
            elements,
            texts,
        } => {
            let key = fields
                .iter()
                .map(|f| field_word(*f))
                .collect::<Vec<_>>()
                .join(" . ");
            let set = if name.is_empty() {
                String::new()
            } else {
                format!("set @{name} ")
            };
            if elements.is_none() && !name.is_empty() && texts.is_empty() {
                return format!(
                    "{key} {not}in set @{name} (the set is not in this dump, so this cannot be evaluated: read the whole `nft list ruleset`)"
                );
            }
            if elements.is_none() {
                return format!(
                    "{key} {not}in {set}{{{}}} (an element was not understood, so this cannot be evaluated)",
                    texts.join(", ")
                );
            }
            const SHOWN: usize = 4;
            let mut shown: Vec<String> = texts.iter().take(SHOWN).cloned().collect();
            if texts.len() > SHOWN {
                shown.push(format!("{} more", texts.len() - SHOWN));
            }
            format!("{key} {not}in {set}{{{}}}", shown.join(", "))
        }
        Cond::Probability { p } => format!("with probability {p:.4}"),
        Cond::Nth { every, packet } => format!("every {every}th packet (offset {packet})"),
        Cond::Unknown { text } => format!("{not}{text} (unknown: may or may not match)"),
    }
}

/// Plain-word description of what a rule does (`--rules`), never Rust debug text.
pub(crate) fn describe_action(a: &Action) -> String {
    let ports = |p: &Option<PortRange>| p.map(|p| format!(", ports {p}")).unwrap_or_default();
    match a {
        Action::None => "no target: only counts the packet".into(),
        Action::Accept => "ACCEPT".into(),
        Action::Drop => "DROP".into(),
        Action::Reject { with } => match with {
            Some(w) => format!("REJECT (answering {w})"),
            None => "REJECT".into(),
        },
        Action::Return => "RETURN to the calling chain".into(),
        Action::Jump { chain } => format!("jump to {chain}"),
        Action::Goto { chain } => format!("go to {chain} (no return here)"),
        Action::Dnat { to } => format!("DNAT: destination becomes {}", to.text),
        Action::Snat { to } => format!("SNAT: source becomes {}", to.text),
        Action::Masquerade { ports: p } => format!(
            "MASQUERADE: source becomes the outgoing interface's address{}",
            ports(p)
        ),
        Action::Redirect { ports: p } => format!(
            "REDIRECT: destination becomes this host (the incoming interface's address){}",
            ports(p)
        ),
        Action::Mark { value, mask } => describe_mark(*value, *mask),
        Action::Log { prefix } => match prefix {
            Some(p) => format!("LOG with prefix \"{p}\", then go on"),
            None => "LOG, then go on".into(),
        },
        Action::Vmap { key, entries, .. } => {
            let k = match key {
                VmapKey::InIface => "the incoming interface",
                VmapKey::OutIface => "the outgoing interface",
                VmapKey::Random => "a random number (load balancing)",
                VmapKey::Concat => "several packet fields",
                VmapKey::Other => "a key nettool cannot evaluate",
            };
            let list: Vec<String> = entries
                .iter()
                .map(|(n, v)| format!("{n}: {}", describe_action(v)))
                .collect();
            format!("verdict map on {k}: {}", list.join("; "))
        }
        Action::Other { text, terminal } => format!(
            "{text} (not modelled{})",
            if *terminal { "; ends evaluation" } else { "" }
        ),
    }
}

/// MARK in words: mark = (mark & ~mask) ^ value, named after the option that wrote it.
fn describe_mark(value: u32, mask: u32) -> String {
    if mask == 0 {
        format!("MARK: flip bits {value:#x} of the mark (XOR, --xor-mark), then go on")
    } else if mask == u32::MAX {
        format!("MARK: set the mark to {value:#x}, then go on")
    } else if value == mask {
        format!("MARK: set bits {value:#x} of the mark (OR, --or-mark), then go on")
    } else if value == 0 {
        format!(
            "MARK: clear bits {mask:#x} of the mark (AND, --and-mark {:#x}), then go on",
            !mask
        )
    } else {
        format!(
            "MARK: mark = (mark & ~{mask:#x}) ^ {value:#x} (--set-xmark {value:#x}/{mask:#x}), then go on"
        )
    }
}

/// A set key's field in words.
fn field_word(f: KeyField) -> &'static str {
    match f {
        KeyField::SrcAddr => "source",
        KeyField::DstAddr => "destination",
        KeyField::L4Proto => "protocol",
        KeyField::SrcPort => "source port",
        KeyField::DstPort => "destination port",
        KeyField::InIface => "incoming interface",
        KeyField::OutIface => "outgoing interface",
    }
}

fn dir_word(d: Dir) -> &'static str {
    match d {
        Dir::Src => "source",
        Dir::Dst => "destination",
    }
}

fn net_str(n: &ipnet::IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// "80", "80-90", "80,443".
pub fn ports_str(p: &[PortRange]) -> String {
    p.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// (IPv6?, proto, host, host port, owner): one published port.
type PortKey = (bool, String, String, String, String);

/// One step of a path: the jump rule's conditions, RETURN exceptions before it, the share.
struct Frame<'a> {
    table: &'a str,
    chain: &'a str,
    line: usize,
    conds: &'a [Match],
    /// A condition implied by a verdict map entry (oifname "docker0" : jump ...).
    extra: Vec<Match>,
    /// The jump rule's comment.
    comment: Option<&'a str>,
    /// RETURN rules above the rule in this chain (their conditions exclude traffic).
    exceptions: Vec<&'a Rule>,
    share: f64,
}

struct Walker<'a> {
    rs: &'a Ruleset,
    names: &'a HashMap<IpAddr, String>,
    reached: HashSet<(usize, usize)>,
    published: BTreeMap<PortKey, PublishedPort>,
    order: Vec<PortKey>,
    snat: Vec<SourceNat>,
    drops: Vec<DropRule>,
    seen_snat: HashSet<(usize, usize, usize)>,
    seen_drop: HashSet<(usize, usize, usize)>,
    drop_index: HashMap<(usize, usize, usize), usize>,
    dangling: Vec<Oddity>,
    accepts: Vec<SourceNat>,
    seen_accept: HashSet<(usize, usize, usize)>,
    visits: usize,
}

const MAX_DEPTH: usize = 24;
const MAX_VISITS: usize = 5_000_000;

impl<'a> Walker<'a> {
    fn visit(&mut self, ti: usize, ci: usize, hook: Hook, stack: &mut Vec<Frame<'a>>) {
        self.visits += 1;
        if stack.len() > MAX_DEPTH || self.visits > MAX_VISITS {
            return;
        }
        self.reached.insert((ti, ci));
        let rs: &'a Ruleset = self.rs;
        let table = &rs.tables[ti];
        let chain = &table.chains[ci];
        let mut exceptions: Vec<&'a Rule> = Vec::new();
        let mut remaining = 1.0f64;
        for rule in &chain.rules {
            // Bounded work whatever the input: count rules, not chain visits.
            self.visits += 1;
            if self.visits > MAX_VISITS {
                return;
            }
            let prob = rule.matches.iter().find_map(|m| match m.cond {
                Cond::Probability { p } if !m.negated => Some(p),
                _ => None,
            });
            let share = match prob {
                Some(p) => remaining * p,
                None => remaining,
            };
            if let Some(p) = prob {
                let only_prob = rule
                    .matches
                    .iter()
                    .all(|m| matches!(m.cond, Cond::Probability { .. }));
                if only_prob {
                    remaining *= 1.0 - p;
                }
            }
            // Skip rules that cannot match on this path (leaving by docker0 and by bridge1 at once).
            let impossible = rule.matches.iter().any(|m| {
                stack
                    .iter()
                    .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
                    .any(|p| contradicts(m, p))
            });
            if impossible {
                continue;
            }
            // A set lookup is walked once per element (each a front-end of its own).
            for extra in set_expansion(rule) {
                let impossible = extra.iter().any(|m| {
                    stack
                        .iter()
                        .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
                        .any(|p| contradicts(m, p))
                });
                if impossible {
                    continue;
                }
                stack.push(Frame {
                    table: &table.name,
                    chain: &chain.name,
                    line: rule.line,
                    conds: &rule.matches,
                    extra,
                    comment: rule.comment.as_deref(),
                    exceptions: exceptions.clone(),
                    share,
                });
                self.action(ti, ci, hook, rule, &rule.action, stack, None);
                stack.pop();
            }
            // A conditional RETURN or ACCEPT above a rule keeps that traffic from reaching it.
            if matches!(rule.action, Action::Return | Action::Accept) && !rule.matches.is_empty() {
                exceptions.push(rule);
            }
            if matches!(
                rule.action,
                Action::Return | Action::Goto { .. } | Action::Accept | Action::Drop
            ) && rule.matches.is_empty()
            {
                break; // nothing after an unconditional end is reached
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn action(
        &mut self,
        ti: usize,
        ci: usize,
        hook: Hook,
        rule: &'a Rule,
        action: &'a Action,
        stack: &mut Vec<Frame<'a>>,
        vmap_cond: Option<String>,
    ) {
        let rs: &'a Ruleset = self.rs;
        let table = &rs.tables[ti];
        let chain = &table.chains[ci];
        match action {
            Action::Jump { chain: target } | Action::Goto { chain: target } => {
                match table.index.get(target.as_str()) {
                    Some(&tci) => {
                        if stack.iter().filter(|f| f.chain == target.as_str()).count() > 0 {
                            return; // a loop: the kernel refuses it; do not recurse
                        }
                        self.visit(ti, tci, hook, stack);
                    }
                    None => {
                        if self.seen_drop.insert((usize::MAX - 1, ti, rule.line)) {
                            self.dangling.push(Oddity {
                                table: table.name.clone(),
                                chain: chain.name.clone(),
                                line: rule.line,
                                what: format!("jumps to {target}, which does not exist"),
                            });
                        }
                    }
                }
            }
            Action::Vmap {
                key,
                entries,
                fields,
            } => {
                let n = entries.len().max(1) as f64;
                for (name, verdict) in entries {
                    if *key == VmapKey::Concat {
                        // kube-proxy's service map: each element is a front-end's conditions.
                        let extra: Vec<Match> = fields
                            .iter()
                            .zip(name.split(" . "))
                            .filter_map(|(f, v)| f.cond(v))
                            .map(|cond| Match {
                                negated: false,
                                cond,
                            })
                            .collect();
                        stack.push(Frame {
                            table: &table.name,
                            chain: &chain.name,
                            line: rule.line,
                            conds: &[],
                            extra,
                            comment: None,
                            exceptions: Vec::new(),
                            share: 1.0,
                        });
                        self.action(ti, ci, hook, rule, verdict, stack, None);
                        stack.pop();
                        continue;
                    }
                    let cond = match key {
                        VmapKey::InIface => format!("arriving on {name}"),
                        VmapKey::OutIface => format!("leaving by {name}"),
                        VmapKey::Random => {
                            // numgen random: each entry takes 1/n of the new connections.
                            stack.push(Frame {
                                table: &table.name,
                                chain: &chain.name,
                                line: rule.line,
                                conds: &[],
                                extra: Vec::new(),
                                comment: None,
                                exceptions: Vec::new(),
                                share: 1.0 / n,
                            });
                            self.action(ti, ci, hook, rule, verdict, stack, None);
                            stack.pop();
                            continue;
                        }
                        VmapKey::Other | VmapKey::Concat => format!("map key {name}"),
                    };
                    let extra = match key {
                        VmapKey::InIface => Some(Cond::InIface { name: name.clone() }),
                        VmapKey::OutIface => Some(Cond::OutIface { name: name.clone() }),
                        _ => None,
                    };
                    match extra {
                        Some(c) => {
                            stack.push(Frame {
                                table: &table.name,
                                chain: &chain.name,
                                line: rule.line,
                                conds: &[],
                                extra: vec![Match {
                                    negated: false,
                                    cond: c,
                                }],
                                comment: None,
                                exceptions: Vec::new(),
                                share: 1.0,
                            });
                            self.action(ti, ci, hook, rule, verdict, stack, None);
                            stack.pop();
                        }
                        None => self.action(ti, ci, hook, rule, verdict, stack, Some(cond)),
                    }
                }
            }
            Action::Dnat { .. } | Action::Redirect { .. } => {
                self.record_dnat(ti, ci, hook, rule, action, stack, vmap_cond)
            }
            Action::Snat { to } => {
                let a = format!("SNAT to {}", to.text);
                self.record_snat(ti, ci, rule, a, stack, vmap_cond)
            }
            Action::Masquerade { .. } => {
                self.record_snat(ti, ci, rule, "MASQUERADE".into(), stack, vmap_cond)
            }
            Action::Accept if hook == Hook::Forward => {
                let all: Vec<&Match> = path_matches(stack);
                let specific = all
                    .iter()
                    .any(|m| !m.negated && matches!(m.cond, Cond::Addr { dir: Dir::Dst, .. }))
                    && all
                        .iter()
                        .any(|m| !m.negated && matches!(m.cond, Cond::Port { dir: Dir::Dst, .. }));
                if specific && self.seen_accept.insert((ti, ci, rule.line)) {
                    // Only the rule's own path: rules above that also accept do not narrow it.
                    let mut when: Vec<String> = all.iter().map(|m| describe_match(m)).collect();
                    let mut seen = HashSet::new();
                    when.retain(|c| seen.insert(c.clone()));
                    self.accepts.push(SourceNat {
                        action: "ACCEPT".into(),
                        sentence: format!("Forwarded when {}.", when.join(", ")),
                        when,
                        table: table.name.clone(),
                        chain: chain.name.clone(),
                        line: rule.line,
                        owner: owner_of(&table.name, &chain.name).map(str::to_string),
                    });
                }
            }
            Action::Drop | Action::Reject { .. } => {
                if let Some(&i) = self.drop_index.get(&(ti, ci, rule.line)) {
                    if !self.drops[i].hooks.contains(&hook) {
                        self.drops[i].hooks.push(hook);
                    }
                    return;
                }
                self.drop_index
                    .insert((ti, ci, rule.line), self.drops.len());
                let mut when = self.conditions(stack, false);
                when.extend(vmap_cond);
                self.drops.push(DropRule {
                    action: match action {
                        Action::Drop => "DROP".into(),
                        _ => "REJECT".into(),
                    },
                    hook,
                    hooks: vec![hook],
                    when,
                    table: table.name.clone(),
                    chain: chain.name.clone(),
                    line: rule.line,
                    comment: rule.comment.clone(),
                    owner: owner_of(&table.name, &chain.name).map(str::to_string),
                    probe: None,
                    established: None,
                    verified: String::new(),
                    conds: stack
                        .iter()
                        .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
                        .cloned()
                        .collect(),
                    v6: table.family == "ip6",
                });
            }
            _ => {}
        }
    }

    /// Every condition on the stack in words, with RETURN exceptions as "unless ...".
    fn conditions(&self, stack: &[Frame], skip_local_types: bool) -> Vec<String> {
        let mut out = Vec::new();
        let path: Vec<&Match> = path_matches(stack);
        for m in &path {
            if skip_local_types
                && matches!(m.cond, Cond::AddrType { .. } | Cond::Probability { .. })
            {
                continue;
            }
            out.push(describe_match(m));
        }
        // Exceptions last, each without what the path already says.
        for f in stack {
            for e in &f.exceptions {
                if e.matches
                    .iter()
                    .any(|m| path.iter().any(|p| contradicts(m, p)))
                {
                    continue; // that exception cannot apply on this path
                }
                let own: Vec<&Match> = e.matches.iter().filter(|m| !path.contains(m)).collect();
                if let [m] = own.as_slice() {
                    // "unless not X" reads better as "only when X"
                    if m.negated {
                        let pos = Match {
                            negated: false,
                            cond: m.cond.clone(),
                        };
                        out.push(format!("only when {}", describe_match(&pos)));
                        continue;
                    }
                }
                if own.is_empty() {
                    continue;
                }
                let words: Vec<String> = own.iter().map(|m| describe_match(m)).collect();
                out.push(format!("unless {}", words.join(" and ")));
            }
        }
        let mut seen = HashSet::new();
        out.retain(|c| seen.insert(c.clone()));
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn record_dnat(
        &mut self,
        ti: usize,
        ci: usize,
        hook: Hook,
        rule: &'a Rule,
        action: &Action,
        stack: &[Frame<'a>],
        vmap_cond: Option<String>,
    ) {
        let table = &self.rs.tables[ti];
        let chain = &table.chains[ci];
        let all: Vec<&Match> = stack
            .iter()
            .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
            .collect();
        let last = |f: &dyn Fn(&Cond) -> bool| {
            all.iter().rev().find(|m| !m.negated && f(&m.cond)).copied()
        };
        let proto = last(&|c| matches!(c, Cond::Proto { .. }))
            .map(|m| match &m.cond {
                Cond::Proto { proto } => proto.clone(),
                _ => unreachable!(),
            })
            .unwrap_or_else(|| "any".into());
        let host = match last(&|c| matches!(c, Cond::Addr { dir: Dir::Dst, .. })) {
            Some(Match {
                cond: Cond::Addr { net, .. },
                ..
            }) => net_str(net),
            _ => {
                if all.iter().any(|m| {
                    !m.negated
                        && matches!(&m.cond, Cond::AddrType { dir: Dir::Dst, types } if types.iter().any(|t| t == "LOCAL"))
                }) {
                    "any local address".to_string()
                } else {
                    "any address".to_string()
                }
            }
        };
        let host_addr = match last(&|c| matches!(c, Cond::Addr { dir: Dir::Dst, .. })) {
            Some(Match {
                cond: Cond::Addr { net, .. },
                ..
            }) if net.prefix_len() == net.max_prefix_len() => Some(net.addr()),
            _ => None,
        };
        let host_ports = match last(&|c| matches!(c, Cond::Port { dir: Dir::Dst, .. })) {
            Some(Match {
                cond: Cond::Port { ports, .. },
                ..
            }) => ports.clone(),
            _ => Vec::new(),
        };
        let host_port = if host_ports.is_empty() {
            "any".to_string()
        } else {
            ports_str(&host_ports)
        };
        let port = match action {
            Action::Dnat { to } => to.ports.map(|p| p.from),
            Action::Redirect { ports } => ports.map(|p| p.from),
            _ => None,
        }
        .or(host_ports.first().map(|p| p.from));
        let (to, addr) = match action {
            Action::Dnat { to } => {
                let port = to
                    .ports
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| host_port.clone());
                let a = match (to.addr, to.addr_to) {
                    (Some(a), Some(b)) => format!("{a}-{b}"),
                    (Some(IpAddr::V6(a)), None) => format!("[{a}]"),
                    (Some(a), None) => a.to_string(),
                    (None, _) if to.text.starts_with('?') => to.text.clone(),
                    (None, _) => "the same address".into(),
                };
                let t = if port == "any" {
                    a
                } else {
                    format!("{a}:{port}")
                };
                (t, to.addr)
            }
            Action::Redirect { ports } => (
                format!(
                    "this host port {}",
                    ports.map(|p| p.to_string()).unwrap_or(host_port.clone())
                ),
                None,
            ),
            _ => return,
        };
        let share: f64 = stack.iter().map(|f| f.share).product();
        let mut conditions = self.conditions(stack, false);
        if hook == Hook::Output {
            // Locally generated packets have no incoming interface: "-i" words say nothing here.
            conditions.retain(|c| !c.contains("arriving on"));
        }
        conditions.extend(vmap_cond.clone());
        let from = from_words(hook, stack, vmap_cond.as_deref());
        let path: Vec<String> = stack
            .iter()
            .map(|f| format!("{} {}:{}", f.table, f.chain, f.line))
            .collect();
        let owner = stack
            .iter()
            .rev()
            .find_map(|f| owner_of(f.table, f.chain))
            .map(str::to_string);
        let service = stack
            .iter()
            .rev()
            .find_map(|f| kube_service_name(f.comment));
        let ipv6 = table.family == "ip6" || addr.is_some_and(|a| a.is_ipv6());
        let key = (
            ipv6,
            proto.clone(),
            host.clone(),
            host_port.clone(),
            owner.clone().unwrap_or_default(),
        );
        let entry = Entry {
            hook,
            path,
            conditions,
            from,
            share,
            conds: all.iter().map(|m| (*m).clone()).collect(),
        };
        let target = Target {
            to,
            addr,
            share,
            name: addr.and_then(|a| self.names.get(&a).cloned()),
            table: table.name.clone(),
            chain: chain.name.clone(),
            line: rule.line,
            port,
            shadowed: false,
            shadowed_by: None,
            counters: rule.counters,
        };
        let p = self.published.entry(key.clone()).or_insert_with(|| {
            self.order.push(key.clone());
            PublishedPort {
                proto,
                host,
                host_port,
                host_addr,
                host_ports,
                ipv6,
                targets: Vec::new(),
                entries: Vec::new(),
                owner,
                service: service.clone(),
                sentence: String::new(),
                probes: Vec::new(),
                reach: Vec::new(),
            }
        });
        if !p
            .targets
            .iter()
            .any(|t| t.line == target.line && t.table == target.table)
        {
            p.targets.push(target);
        }
        if !p
            .entries
            .iter()
            .any(|e| e.hook == entry.hook && e.from == entry.from)
        {
            p.entries.push(entry);
        }
        if p.service.is_none() {
            p.service = service;
        }
    }

    fn record_snat(
        &mut self,
        ti: usize,
        ci: usize,
        rule: &'a Rule,
        action: String,
        stack: &[Frame<'a>],
        vmap_cond: Option<String>,
    ) {
        if !self.seen_snat.insert((ti, ci, rule.line)) {
            return;
        }
        let table = &self.rs.tables[ti];
        let chain = &table.chains[ci];
        let mut when = self.conditions(stack, false);
        when.extend(vmap_cond);
        // Say who sets a mark this rule depends on (KUBE-MARK-MASQ, CNI-HOSTPORT-SETMARK...).
        let marks: Vec<u32> = stack
            .iter()
            .flat_map(|f| {
                f.conds
                    .iter()
                    .chain(f.exceptions.iter().flat_map(|e| e.matches.iter()))
            })
            .filter_map(|m| match m.cond {
                Cond::Mark { mask, .. } => Some(mask),
                _ => None,
            })
            .collect();
        for mask in marks {
            let setters = mark_setters(self.rs, mask);
            if !setters.is_empty() {
                when.push(format!("(that mark is set by {})", setters.join(", ")));
            }
        }
        let owner = owner_of(&table.name, &chain.name).map(str::to_string);
        let what = if action == "MASQUERADE" {
            "gets the outgoing interface's address as its source (MASQUERADE)".to_string()
        } else {
            format!("gets its source rewritten ({action})")
        };
        let sentence = if when.is_empty() {
            format!("Every new connection leaving {what}.")
        } else {
            format!("Traffic {} {what}.", when.join(", "))
        };
        self.snat.push(SourceNat {
            action,
            when,
            table: table.name.clone(),
            chain: chain.name.clone(),
            line: rule.line,
            owner,
            sentence,
        });
    }
}

/// Every condition on the path; a set walked element by element is said by its element
/// (`destination 192.168.0.2`), not as the set again.
fn path_matches<'m>(stack: &'m [Frame]) -> Vec<&'m Match> {
    stack
        .iter()
        .flat_map(|f| {
            let expanded = !f.extra.is_empty();
            f.conds
                .iter()
                .filter(move |m| {
                    !(expanded
                        && !m.negated
                        && matches!(
                            m.cond,
                            Cond::NftSet {
                                elements: Some(_),
                                ..
                            }
                        ))
                })
                .chain(f.extra.iter())
        })
        .collect()
}

/// Sets up to this size are walked element by element; a bigger one is one path described as
/// the set (its membership is still evaluated by every packet walk).
const SET_EXPAND_MAX: usize = 64;

/// The extra conditions of each path through `rule`: one per element of its first set lookup
/// (none when the set is empty: the rule never matches), or one empty path.
fn set_expansion(rule: &Rule) -> Vec<Vec<Match>> {
    let set = rule.matches.iter().find_map(|m| match &m.cond {
        Cond::NftSet {
            elements: Some(els),
            ..
        } if !m.negated && els.len() <= SET_EXPAND_MAX => Some(els),
        _ => None,
    });
    match set {
        Some(els) => els
            .iter()
            .map(|el| {
                el.iter()
                    .map(|c| Match {
                        negated: false,
                        cond: c.clone(),
                    })
                    .collect()
            })
            .collect(),
        None => vec![Vec::new()],
    }
}

/// True when `a` and `b` cannot both hold for one packet (interfaces, protocol).
fn contradicts(a: &Match, b: &Match) -> bool {
    // Ports and addresses: two positive matches on the same field contradict when their sets
    // do not meet (netavark's one DN chain for every port of a network: the 8081 rule is not
    // on the path through the `--dport 8080` jump); a positive one inside a negated one too.
    let (pos, neg) = match (a.negated, b.negated) {
        (false, false) => (a, None),
        (false, true) => (a, Some(b)),
        (true, false) => (b, Some(a)),
        (true, true) => return false,
    };
    let other = neg.unwrap_or(b);
    match (&pos.cond, &other.cond) {
        (Cond::Port { dir: d1, ports: p }, Cond::Port { dir: d2, ports: q }) if d1 == d2 => {
            let meets = |x: &PortRange, y: &PortRange| x.from <= y.to && y.from <= x.to;
            let inside = |x: &PortRange| q.iter().any(|y| y.from <= x.from && x.to <= y.to);
            return match neg {
                None => !p.iter().any(|x| q.iter().any(|y| meets(x, y))),
                Some(_) => !p.is_empty() && p.iter().all(inside),
            };
        }
        (Cond::Addr { dir: d1, net: x }, Cond::Addr { dir: d2, net: y }) if d1 == d2 => {
            return match neg {
                None => !(x.contains(y) || y.contains(x)),
                Some(_) => y.contains(x),
            };
        }
        _ => {}
    }
    let same_kind_value = |x: &Cond, y: &Cond| -> Option<bool> {
        match (x, y) {
            (Cond::InIface { name: p }, Cond::InIface { name: q })
            | (Cond::OutIface { name: p }, Cond::OutIface { name: q }) => {
                if p.ends_with('+') || q.ends_with('+') || p.ends_with('*') || q.ends_with('*') {
                    None
                } else {
                    Some(p == q)
                }
            }
            (Cond::Proto { proto: p }, Cond::Proto { proto: q }) => Some(p == q),
            _ => None,
        }
    };
    match same_kind_value(&a.cond, &b.cond) {
        Some(equal) => match (a.negated, b.negated) {
            (false, false) => !equal,
            (true, false) | (false, true) => equal,
            (true, true) => false,
        },
        None => false,
    }
}

/// Chains holding a MARK rule that sets any bit of `mask`.
fn mark_setters(rs: &Ruleset, mask: u32) -> Vec<String> {
    let mut out = Vec::new();
    for t in &rs.tables {
        for c in &t.chains {
            if c.rules
                .iter()
                .any(|r| matches!(r.action, Action::Mark { value, .. } if value & mask != 0))
                && !out.contains(&c.name)
            {
                out.push(c.name.clone());
            }
        }
    }
    out
}

/// kube-proxy comments look like "ns1/svc1:p80" or "ns4/svc4:p80 -> 10.180.0.5:80".
fn kube_service_name(comment: Option<&str>) -> Option<String> {
    let c = comment?;
    let first = c.split_whitespace().next()?;
    (first.contains('/') && first.contains(':')).then(|| first.to_string())
}

/// Where traffic on a path comes from, in words.
fn from_words(hook: Hook, stack: &[Frame], vmap: Option<&str>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut excluded_local = None;
    let local = hook == Hook::Output;
    for f in stack {
        for m in f.conds.iter().chain(f.extra.iter()) {
            match &m.cond {
                // Locally generated packets have no incoming interface.
                Cond::InIface { .. } if local => {}
                Cond::InIface { name } if m.negated => parts.push(format!("except via {name}")),
                Cond::InIface { name } => parts.push(format!("only via {name}")),
                Cond::Addr { dir: Dir::Src, net } if m.negated => {
                    parts.push(format!("except from {}", net_str(net)))
                }
                Cond::Addr { dir: Dir::Src, net } => {
                    parts.push(format!("only from {}", net_str(net)))
                }
                Cond::Addr { dir: Dir::Dst, net } if m.negated => {
                    excluded_local = Some(net_str(net))
                }
                Cond::AddrType {
                    dir: Dir::Src,
                    types,
                } => parts.push(format!(
                    "only from {}{} addresses",
                    if m.negated { "non-" } else { "" },
                    types.join("/").to_ascii_lowercase()
                )),
                Cond::Set { name, dirs } if dirs.contains(&Dir::Src) => parts.push(format!(
                    "{} sources in set {name}",
                    if m.negated { "except" } else { "only" }
                )),
                _ => {}
            }
        }
        for e in &f.exceptions {
            for m in &e.matches {
                if let Cond::InIface { name } = &m.cond {
                    if !m.negated && !local {
                        parts.push(format!("except via {name}"));
                    }
                }
            }
        }
    }
    if let Some(v) = vmap {
        parts.push(v.to_string());
    }
    let mut seen = HashSet::new();
    parts.retain(|p| seen.insert(p.clone()));
    let restricted = parts.iter().any(|p| p.starts_with("only"));
    // One "only" for the lot: "only from 10.0.0.0/8 via eth0", never "only ... only".
    let mut said_only = false;
    for p in parts.iter_mut() {
        if let Some(rest) = p.strip_prefix("only ") {
            if said_only {
                *p = rest.to_string();
            }
            said_only = true;
        }
    }
    let base = match (hook, restricted) {
        (Hook::Output, _) => "from this host itself",
        (_, true) => "arriving",
        (_, false) => "arriving from anywhere",
    };
    let mut s = if parts.is_empty() {
        base.to_string()
    } else {
        format!("{base} {}", parts.join(", "))
    };
    if let Some(x) = excluded_local {
        s.push_str(&format!(" only when not to {x}"));
    }
    s
}

fn title_proto(p: &str) -> String {
    match p {
        "any" => "Any protocol".into(),
        p => p.to_ascii_uppercase(),
    }
}

fn pct(share: f64) -> String {
    let v = share * 100.0;
    if (v - v.round()).abs() < 0.05 {
        format!("{:.0}%", v)
    } else {
        format!("{:.1}%", v)
    }
}

fn sentence(p: &PublishedPort) -> String {
    let port = if p.host_port == "any" {
        String::new()
    } else {
        format!(" port {}", p.host_port)
    };
    let live: Vec<&Target> = p.targets.iter().filter(|t| !t.shadowed).collect();
    let balanced = live.len() > 1 && live.iter().any(|t| t.share < 0.999);
    let mut targets: Vec<String> = Vec::new();
    for t in &live {
        let mut s = t.to.clone();
        if let Some(n) = &t.name {
            s.push_str(&format!(" ({n})"));
        }
        if balanced || t.share < 0.999 {
            s.push_str(&format!(" ({})", pct(t.share)));
        }
        targets.push(s);
    }
    let mut s = format!("{} to {}{}", title_proto(&p.proto), p.host, port);
    if targets.is_empty() {
        s.push_str(" is meant to be translated");
    } else if balanced {
        s.push_str(&format!(" is balanced over {}", targets.join(", ")));
    } else if targets.len() > 1 {
        s.push_str(&format!(
            " is sent to {} (which one depends on where it comes from)",
            targets.join(" or ")
        ));
    } else {
        s.push_str(&format!(" is sent to {}", targets[0]));
    }
    let refs: Vec<RuleRef> = p.targets.iter().map(target_ref).collect();
    let (ok, not): (Vec<&Probe>, Vec<&Probe>) = p.probes.iter().partition(|pr| {
        refs.iter().any(|r| {
            reach::reaches(pr, r) && !matches!(pr.verdict.as_str(), "dropped" | "rejected")
        })
    });
    if !ok.is_empty() {
        let mut who: Vec<String> = ok.iter().map(|pr| from_short(pr)).collect();
        who.dedup();
        s.push_str(&format!(": reached {}", who.join(", ")));
    } else if !p.probes.is_empty() {
        s.push_str(": no walked packet gets through");
    }
    let mut nots: Vec<String> = Vec::new();
    for pr in &not {
        let why = match &pr.dnat_by {
            Some(r) if refs.contains(r) => format!("translated, then {}", why_not(pr)),
            _ => why_not(pr),
        };
        let w = format!("{} ({why})", from_short(pr));
        if !nots.contains(&w) {
            nots.push(w);
        }
    }
    if !nots.is_empty() {
        s.push_str(&format!("; not {}", nots.join(", not ")));
    }
    for t in p.targets.iter().filter(|t| t.shadowed) {
        match &t.shadowed_by {
            Some(r) => s.push_str(&format!(
                "; {} [{}] is shadowed: {r} takes every walked packet first",
                t.to,
                target_ref(t)
            )),
            None => s.push_str(&format!(
                "; {} [{}] is never applied: every walked packet is dropped or left untranslated before it",
                t.to,
                target_ref(t)
            )),
        }
    }
    let unknown: Vec<&String> = p
        .entries
        .iter()
        .flat_map(|e| &e.conditions)
        .filter(|c| c.contains("(unknown: may or may not match)"))
        .collect();
    if let Some(u) = unknown.first() {
        s.push_str(&format!(
            "; only if {}",
            u.replace(
                " (unknown: may or may not match)",
                ", which nettool cannot evaluate"
            )
        ));
    }
    s.push('.');
    s
}

/// The rule a target's DNAT is.
fn target_ref(t: &Target) -> RuleRef {
    RuleRef {
        table: t.table.clone(),
        chain: t.chain.clone(),
        line: t.line,
    }
}

/// Short name of where a probe comes from, for the one-sentence summary.
fn from_short(p: &Probe) -> String {
    match &p.from {
        reach::From::Outside => "from outside".into(),
        reach::From::Container { iface } => format!("from containers on {iface}"),
        reach::From::ThisHost => format!("from this host to {}", p.packet.dst),
        reach::From::AsTheRuleSays => format!(
            "from {}{}",
            p.packet.src,
            p.packet
                .in_iface
                .as_deref()
                .map(|i| format!(" on {i}"))
                .unwrap_or_default()
        ),
    }
}

/// Why a probe did not reach the port, in a few words.
fn why_not(p: &Probe) -> String {
    match (&p.dnat_by, p.verdict.as_str(), &p.decided_by) {
        (Some(r), _, _) => format!("sent elsewhere by {r}"),
        (None, "dropped" | "rejected", Some(d)) => format!("{} by {d}", p.verdict),
        (None, "accepted-local", _) => "not translated: delivered to this host".into(),
        (None, _, _) => "not translated".into(),
    }
}

/// Walk representative packets into a published port; its sentence says what they found.
fn verify_published(rs: &Ruleset, model: &HostModel, p: &mut PublishedPort) {
    let v6 = p.ipv6;
    let mut probes: Vec<Probe> = Vec::new();
    for e in &p.entries {
        let conds: Vec<&Match> = e.conds.iter().collect();
        for pr in reach::probes_for(rs, model, &conds, e.hook, v6) {
            if !probes.iter().any(|x| x.packet == pr.packet) {
                probes.push(pr);
            }
        }
    }
    // No OUTPUT path into the rule: whether this host itself gets translated is walked too.
    if !p.entries.iter().any(|e| e.hook == Hook::Output) {
        if let Some(e) = p.entries.first() {
            let conds: Vec<&Match> = e.conds.iter().collect();
            let pkt = reach::satisfy(&conds, Hook::Output, model, v6);
            if !probes.iter().any(|x| x.packet == pkt) {
                probes.push(reach::probe(rs, model, reach::From::ThisHost, pkt));
            }
        }
    }
    let refs: Vec<RuleRef> = p.targets.iter().map(target_ref).collect();
    for (t, r) in p.targets.iter_mut().zip(&refs) {
        t.shadowed = !probes.iter().any(|pr| reach::reaches(pr, r));
        if t.shadowed {
            t.shadowed_by = probes.iter().find_map(|pr| pr.dnat_by.clone());
        }
    }
    p.reach = probes
        .iter()
        .map(|pr| {
            let i = refs
                .iter()
                .position(|r| pr.dnat_by.as_ref() == Some(r))
                .or_else(|| refs.iter().position(|r| reach::reaches(pr, r)))
                .unwrap_or(0);
            reach::fate(pr, &refs[i], &p.targets[i].to)
        })
        .collect();
    p.probes = probes;
    p.sentence = sentence(p);
}

/// Walk a packet that meets a drop rule's conditions: does it really end there?
fn verify_drop(rs: &Ruleset, model: &HostModel, d: &mut DropRule) {
    if d.action == "policy DROP" {
        d.verified = "a policy: applies to whatever no rule decided (see the flows below)".into();
        return;
    }
    let me = RuleRef {
        table: d.table.clone(),
        chain: d.chain.clone(),
        line: d.line,
    };
    let conds: Vec<&Match> = d.conds.iter().collect();
    let pkt = reach::satisfy(&conds, d.hook, model, d.v6);
    let pr = reach::probe(rs, model, reach::From::AsTheRuleSays, pkt.clone());
    d.verified = if pr.decided_by.as_ref() == Some(&me) {
        format!("walked: {} is {} here", pr.packet, pr.verdict)
    } else {
        format!(
            "walked: {} does not end here: {}",
            pr.packet,
            match (&pr.decided_by, pr.verdict.as_str()) {
                (Some(r), v) => format!("{v} earlier by {r}"),
                (None, _) => pr.summary.clone(),
            }
        )
    };
    let stateful = d
        .conds
        .iter()
        .any(|m| matches!(m.cond, Cond::CtState { .. }));
    if !stateful && pr.decided_by.as_ref() == Some(&me) {
        let mut est = pkt;
        est.state = "ESTABLISHED".into();
        let e = reach::probe(rs, model, reach::From::AsTheRuleSays, est);
        if e.decided_by.as_ref() != Some(&me) {
            let by = e
                .accepted_by
                .last()
                .map(|r| format!(" by {r}"))
                .unwrap_or_default();
            d.verified.push_str(&format!(
                "; only new connections: packets of established or related ones are accepted before it{by}"
            ));
            d.established = Some(e);
        }
    }
    d.probe = Some(pr);
}

/// Whole classes of traffic, walked: from outside straight to a container (a port nothing
/// publishes), from a container out, and from one container network to another.
fn flows(rs: &Ruleset, model: &HostModel) -> Vec<Flow> {
    let mut out = Vec::new();
    let nets: Vec<&reach::Network> = model.networks.iter().take(16).collect();
    let packet = |src: IpAddr, dst: IpAddr, in_iface: &str| super::walk::Packet {
        proto: "tcp".into(),
        src,
        sport: Some(40000),
        dst,
        dport: Some(65001),
        in_iface: Some(in_iface.to_string()),
        out_iface: None,
        mark: 0,
        state: "NEW".into(),
        from_host: false,
    };
    let mut push = |kind: &str, from: String, to: String, pr: Probe| {
        let open = matches!(pr.verdict.as_str(), "forwarded" | "accepted-local" | "sent");
        let why = if open {
            let mut s = match pr.accepted_by.last() {
                Some(r) => format!("accepted by {r}"),
                None => "nothing drops it (the chains' policies accept)".into(),
            };
            if let Some(r) = &pr.snat_by {
                s.push_str(&format!(", source rewritten by {r}"));
            }
            s
        } else {
            why_not(&pr)
        };
        let sentence = format!(
            "{} {from} to {to} ({}): {} — {why}.",
            match kind {
                "inbound" => "New connections",
                "outbound" => "New connections",
                _ => "New connections",
            },
            pr.packet,
            if open { "OPEN" } else { "closed" }
        );
        out.push(Flow {
            kind: kind.into(),
            from,
            to,
            verdict: if open { "open" } else { "closed" }.into(),
            probe: pr,
            sentence,
        });
    };
    for n in &nets {
        let v6 = n.net.addr().is_ipv6();
        let c = reach::host_in(&n.net, 2);
        let pkt = packet(model.client_addrs[v6 as usize], c, &model.external_iface);
        let pr = reach::probe(rs, model, reach::From::Outside, pkt);
        push(
            "inbound",
            "from outside".into(),
            format!(
                "a container on {} ({}), on a port nothing publishes",
                n.iface, n.net
            ),
            pr,
        );
        let mut pkt = packet(
            reach::host_in(&n.net, 200),
            model.client_addrs[v6 as usize],
            &n.iface,
        );
        pkt.dport = Some(443);
        let pr = reach::probe(
            rs,
            model,
            reach::From::Container {
                iface: n.iface.clone(),
            },
            pkt,
        );
        push(
            "outbound",
            format!("from a container on {}", n.iface),
            "outside".into(),
            pr,
        );
        for m in &nets {
            if m.iface == n.iface || m.net.addr().is_ipv6() != v6 {
                continue;
            }
            let pkt = packet(
                reach::host_in(&n.net, 200),
                reach::host_in(&m.net, 2),
                &n.iface,
            );
            let pr = reach::probe(
                rs,
                model,
                reach::From::Container {
                    iface: n.iface.clone(),
                },
                pkt,
            );
            push(
                "between",
                format!("from a container on {}", n.iface),
                format!("a container on {} ({})", m.iface, m.net),
                pr,
            );
        }
    }
    out
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
        if let Some(mut p) = w.published.remove(k) {
            p.sentence = sentence(&p);
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
        warnings: rs.warnings.clone(),
    }
}

/// The known systems whose chains are present.
pub fn recognise(rs: &Ruleset) -> Vec<Recognised> {
    let mut out = Vec::new();
    let has = |name: &str| rs.tables.iter().any(|t| t.index.contains_key(name));
    let count_prefix = |p: &str| {
        rs.tables
            .iter()
            .flat_map(|t| &t.chains)
            .filter(|c| c.name.starts_with(p))
            .map(|c| &c.name)
            .collect::<HashSet<_>>()
            .len()
    };
    let mut add = |s: &str, d: String| {
        out.push(Recognised {
            system: s.into(),
            detail: d,
        })
    };
    if let Some(t) = rs.tables.iter().find(|t| t.name == "docker-bridges") {
        add(
            "docker",
            format!(
                "Docker's nftables backend (table {} {}, {} chains)",
                t.family,
                t.name,
                t.chains.len()
            ),
        );
    }
    if let Some(t) = rs.tables.iter().find(|t| t.name == "kube-proxy") {
        let maps = t
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| {
                matches!(
                    &r.action,
                    Action::Vmap {
                        key: VmapKey::Concat,
                        ..
                    }
                )
            })
            .count();
        add(
            "kube-proxy",
            format!(
                "kube-proxy nftables mode (table {} kube-proxy, {} service/endpoint chain(s), {maps} verdict-map lookup(s) on address . protocol . port)",
                t.family,
                t.chains
                    .iter()
                    .filter(|c| c.name.starts_with("service-") || c.name.starts_with("endpoint-"))
                    .count()
            ),
        );
    }
    if has("DOCKER-ISOLATION-STAGE-1") {
        add(
            "docker",
            "Docker, older chain set (DOCKER, DOCKER-ISOLATION-STAGE-1/2, DOCKER-USER)".into(),
        );
    } else if has("DOCKER-FORWARD") || has("DOCKER-CT") {
        add(
            "docker",
            "Docker 28+ chain set (DOCKER-FORWARD, DOCKER-CT, DOCKER-BRIDGE, DOCKER-INTERNAL, DOCKER-USER)".into(),
        );
    } else if has("DOCKER") {
        add("docker", "Docker (chain DOCKER)".into());
    }
    if has("DOCKER-INGRESS") {
        add("docker", "Docker swarm ingress (DOCKER-INGRESS)".into());
    }
    if has("DOCKER_OUTPUT") || has("DOCKER_POSTROUTING") {
        add(
            "docker-dns",
            "Docker's embedded DNS inside a container namespace: queries to 127.0.0.11:53 are sent to the resolver's real port (DOCKER_OUTPUT) and replies rewritten back to port 53 (DOCKER_POSTROUTING)".into(),
        );
    }
    if has("CNI-HOSTPORT-DNAT") {
        add(
            "cni-portmap",
            format!(
                "CNI portmap plugin (CNI-HOSTPORT-DNAT, {} CNI-DN-* container chain(s), SETMARK/MASQ for hairpin)",
                count_prefix("CNI-DN-")
            ),
        );
    }
    if has("KUBE-SERVICES") || count_prefix("KUBE-SVC-") > 0 {
        add(
            "kube-proxy",
            format!(
                "kube-proxy iptables mode: {} service chain(s) (KUBE-SVC-*), {} endpoint chain(s) (KUBE-SEP-*)",
                count_prefix("KUBE-SVC-"),
                count_prefix("KUBE-SEP-")
            ),
        );
    }
    if count_prefix("NETAVARK") > 0 || rs.tables.iter().any(|t| t.name == "netavark") {
        add(
            "netavark",
            "Podman's netavark (NETAVARK-* chains or table netavark)".into(),
        );
    }
    if count_prefix("NETTOOL") > 0 || rs.tables.iter().any(|t| t.name.starts_with("nettool")) {
        add(
            "nettool",
            "a nettool lab (NETTOOL* chains or table nettool*)".into(),
        );
    }
    out
}

/// kube-proxy services: each KUBE-SVC chain with its endpoints and their shares.
pub fn kube_services(rs: &Ruleset) -> Vec<Service> {
    let mut out = Vec::new();
    for t in &rs.tables {
        for c in t.chains.iter().filter(|c| c.name.starts_with("KUBE-SVC-")) {
            let mut remaining = 1.0f64;
            let mut endpoints = Vec::new();
            let mut name = None;
            for r in &c.rules {
                let Some(target) = r.action.target_chain() else {
                    continue;
                };
                if !target.starts_with("KUBE-SEP-") {
                    continue;
                }
                // Session-affinity rules (-m recent --rcheck) repeat an endpoint; they are not a share.
                if r.matches
                    .iter()
                    .any(|m| matches!(&m.cond, Cond::Unknown { text } if text.contains("recent")))
                {
                    continue;
                }
                let p = r.matches.iter().find_map(|m| match m.cond {
                    Cond::Probability { p } => Some(p),
                    _ => None,
                });
                let share = remaining * p.unwrap_or(1.0);
                remaining -= share;
                if name.is_none() {
                    name = kube_service_name(r.comment.as_deref());
                }
                let ep = t
                    .chain(target)
                    .and_then(|sep| {
                        sep.rules.iter().find_map(|r| match &r.action {
                            Action::Dnat { to } => Some(to.text.clone()),
                            _ => None,
                        })
                    })
                    .unwrap_or_else(|| format!("{target} (missing)"));
                endpoints.push((ep, share));
            }
            out.push(Service {
                name: name
                    .or_else(|| {
                        c.rules
                            .iter()
                            .find_map(|r| kube_service_name(r.comment.as_deref()))
                    })
                    .unwrap_or_else(|| c.name.clone()),
                chain: c.name.clone(),
                endpoints,
            });
        }
    }
    out
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
