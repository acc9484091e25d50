//! The ruleset in plain words: published ports, source NAT, drops, unreachable chains,
//! and which known system (Docker, CNI portmap, kube-proxy, netavark, nettool labs) wrote it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use super::model::*;

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
    /// Where it goes (several for load-balanced services).
    pub targets: Vec<Target>,
    /// Each way in, with where it applies from.
    pub entries: Vec<Entry>,
    /// Which system wrote it.
    pub owner: Option<String>,
    /// Service name from a kube-proxy comment ("ns/svc:port").
    pub service: Option<String>,
    /// The whole thing in one sentence.
    pub sentence: String,
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
            "{} {not}in set {name}",
            dirs.iter()
                .map(|d| dir_word(*d))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Cond::Probability { p } => format!("with probability {p:.4}"),
        Cond::Nth { every, packet } => format!("every {every}th packet (offset {packet})"),
        Cond::Unknown { text } => format!("{not}{text} (unknown: may or may not match)"),
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

/// One step of a path: the jump rule's conditions, RETURN exceptions before it, the share.
struct Frame<'a> {
    table: &'a str,
    chain: &'a str,
    line: usize,
    conds: &'a [Match],
    /// A condition implied by a verdict map entry (oifname "docker0" : jump ...).
    extra: Option<Match>,
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
    published: BTreeMap<(String, String, String, String), PublishedPort>,
    order: Vec<(String, String, String, String)>,
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
            stack.push(Frame {
                table: &table.name,
                chain: &chain.name,
                line: rule.line,
                conds: &rule.matches,
                extra: None,
                comment: rule.comment.as_deref(),
                exceptions: exceptions.clone(),
                share,
            });
            self.action(ti, ci, hook, rule, &rule.action, stack, None);
            stack.pop();
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
            Action::Vmap { key, entries } => {
                let n = entries.len().max(1) as f64;
                for (name, verdict) in entries {
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
                                extra: None,
                                comment: None,
                                exceptions: Vec::new(),
                                share: 1.0 / n,
                            });
                            self.action(ti, ci, hook, rule, verdict, stack, None);
                            stack.pop();
                            continue;
                        }
                        VmapKey::Other => format!("map key {name}"),
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
                                extra: Some(Match {
                                    negated: false,
                                    cond: c,
                                }),
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
                let all: Vec<&Match> = stack
                    .iter()
                    .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
                    .collect();
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
                });
            }
            _ => {}
        }
    }

    /// Every condition on the stack in words, with RETURN exceptions as "unless ...".
    fn conditions(&self, stack: &[Frame], skip_local_types: bool) -> Vec<String> {
        let mut out = Vec::new();
        let path: Vec<&Match> = stack
            .iter()
            .flat_map(|f| f.conds.iter().chain(f.extra.iter()))
            .collect();
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
        let host_port = match last(&|c| matches!(c, Cond::Port { dir: Dir::Dst, .. })) {
            Some(Match {
                cond: Cond::Port { ports, .. },
                ..
            }) => ports_str(ports),
            _ => "any".into(),
        };
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
        let key = (
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
        };
        let target = Target {
            to,
            addr,
            share,
            name: addr.and_then(|a| self.names.get(&a).cloned()),
            table: table.name.clone(),
            chain: chain.name.clone(),
            line: rule.line,
        };
        let p = self.published.entry(key.clone()).or_insert_with(|| {
            self.order.push(key.clone());
            PublishedPort {
                proto,
                host,
                host_port,
                targets: Vec::new(),
                entries: Vec::new(),
                owner,
                service: service.clone(),
                sentence: String::new(),
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

/// True when `a` and `b` cannot both hold for one packet (interfaces, protocol).
fn contradicts(a: &Match, b: &Match) -> bool {
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
    let mut targets: Vec<String> = Vec::new();
    for t in &p.targets {
        let mut s = t.to.clone();
        if let Some(n) = &t.name {
            s.push_str(&format!(" ({n})"));
        }
        if p.targets.len() > 1 || t.share < 0.999 {
            s.push_str(&format!(" ({})", pct(t.share)));
        }
        targets.push(s);
    }
    let first = p
        .entries
        .iter()
        .find(|e| e.hook == Hook::Prerouting)
        .or(p.entries.first());
    let mut s = format!("{} to {}{}", title_proto(&p.proto), p.host, port);
    if let Some(e) = first {
        s.push_str(&format!(", {},", e.from));
    }
    let verb = if targets.len() > 1 {
        "is balanced over"
    } else {
        "is sent to"
    };
    s.push_str(&format!(" {verb} {}", targets.join(", ")));
    let others: Vec<&Entry> = p.entries.iter().filter(|e| Some(*e) != first).collect();
    for e in &others {
        s.push_str(&format!("; {}", e.from));
        if p.owner.as_deref() == Some("docker")
            && e.hook == Hook::Output
            && e.from.contains("127.0.0.0/8")
        {
            s.push_str(" — localhost goes through the userland proxy");
        }
    }
    if !others.iter().any(|e| e.hook == Hook::Output) && first.map(|e| e.hook) != Some(Hook::Output)
    {
        s.push_str("; not from this host itself (no OUTPUT path)");
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

/// Summarise a ruleset (no container names).
pub fn summarize(rs: &Ruleset) -> Summary {
    summarize_with(rs, &HashMap::new())
}

/// Summarise a ruleset, naming the containers behind addresses found in `names`.
pub fn summarize_with(rs: &Ruleset, names: &HashMap<IpAddr, String>) -> Summary {
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
    Summary {
        source: rs.source.clone(),
        tables: rs.tables.len(),
        rules: rs.rule_count(),
        recognised: recognise(rs),
        services: kube_services(rs),
        published,
        source_nat: w.snat,
        drops,
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
            "TCP to any local address port 8080, arriving from anywhere except via docker0, is sent to 172.17.0.2:80 (container web); from this host itself only when not to 127.0.0.0/8 — localhost goes through the userland proxy."
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
