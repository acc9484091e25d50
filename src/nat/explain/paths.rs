//! The paths from each hook into every rule (jumps, gotos, verdict maps, set elements): what
//! they publish, rewrite, accept or drop, and under which conditions, in words.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::super::model::*;
use super::words::{describe_match, net_str, ports_str};
use super::{owner_of, DropRule, Entry, Oddity, PublishedPort, SourceNat, Target};

/// (IPv6?, proto, host, host port, owner): one published port.
type PortKey = (bool, String, String, String, String);

/// One step of a path: the jump rule's conditions, RETURN exceptions before it, the share.
pub(super) struct Frame<'a> {
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

pub(super) struct Walker<'a> {
    pub(super) rs: &'a Ruleset,
    pub(super) names: &'a HashMap<IpAddr, String>,
    pub(super) reached: HashSet<(usize, usize)>,
    pub(super) published: BTreeMap<PortKey, PublishedPort>,
    pub(super) order: Vec<PortKey>,
    pub(super) snat: Vec<SourceNat>,
    pub(super) drops: Vec<DropRule>,
    pub(super) seen_snat: HashSet<(usize, usize, usize)>,
    pub(super) seen_drop: HashSet<(usize, usize, usize)>,
    pub(super) drop_index: HashMap<(usize, usize, usize), usize>,
    pub(super) dangling: Vec<Oddity>,
    pub(super) accepts: Vec<SourceNat>,
    pub(super) seen_accept: HashSet<(usize, usize, usize)>,
    pub(super) visits: usize,
    /// Sets too big to walk element by element: what was left out, once per rule.
    pub(super) notes: BTreeMap<(usize, usize, usize), String>,
}

const MAX_DEPTH: usize = 24;
const MAX_VISITS: usize = 5_000_000;

impl<'a> Walker<'a> {
    pub(super) fn visit(&mut self, ti: usize, ci: usize, hook: Hook, stack: &mut Vec<Frame<'a>>) {
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
            let (paths, left_out) = set_expansion(rule);
            if let Some(note) = left_out {
                self.notes.entry((ti, ci, rule.line)).or_insert_with(|| {
                    format!("{} {} line {}: {note}", table.name, chain.name, rule.line)
                });
            }
            for extra in paths {
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
        let from = from_words(hook, stack, vmap_cond.as_deref());
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
        // Each way in is said once: a load-balanced service reaches every endpoint by the same
        // way, so its words are made only for the first (kube-proxy: thousands of them).
        let known_entry = self
            .published
            .get(&key)
            .is_some_and(|p| p.entries.iter().any(|e| e.hook == hook && e.from == from));
        let entry = (!known_entry).then(|| {
            let mut conditions = self.conditions(stack, false);
            if hook == Hook::Output {
                // Locally generated packets have no incoming interface: "-i" words say nothing here.
                conditions.retain(|c| !c.contains("arriving on"));
            }
            conditions.extend(vmap_cond.clone());
            Entry {
                hook,
                path: stack
                    .iter()
                    .map(|f| format!("{} {}:{}", f.table, f.chain, f.line))
                    .collect(),
                conditions,
                from,
                share,
                conds: all.iter().map(|m| (*m).clone()).collect(),
            }
        });
        let target = Target {
            to,
            addr,
            share,
            name: addr
                .and_then(|a| self.names.get(&a).cloned())
                .or_else(|| swarm_ingress(stack)),
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
        p.entries.extend(entry);
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

/// Sets up to this size are walked element by element, every element a path of its own; of a
/// bigger one the first this many are, and the summary's warnings name the rest.
const SET_EXPAND_MAX: usize = 1024;

/// The extra conditions of each path through `rule`: one per element of its first set lookup
/// (none when the set is empty: the rule never matches), or one empty path. With them, when the
/// set is bigger than [`SET_EXPAND_MAX`], what was left out in words.
fn set_expansion(rule: &Rule) -> (Vec<Vec<Match>>, Option<String>) {
    let set = rule.matches.iter().find_map(|m| match &m.cond {
        Cond::NftSet {
            elements: Some(els),
            name,
            texts,
            ..
        } if !m.negated => Some((els, name, texts)),
        _ => None,
    });
    let Some((els, name, texts)) = set else {
        return (vec![Vec::new()], None);
    };
    let paths = els
        .iter()
        .take(SET_EXPAND_MAX)
        .map(|el| {
            el.iter()
                .map(|c| Match {
                    negated: false,
                    cond: c.clone(),
                })
                .collect()
        })
        .collect();
    let left_out = (els.len() > SET_EXPAND_MAX).then(|| {
        let rest = els.len() - SET_EXPAND_MAX;
        let text = |i: usize| texts.get(i).cloned().unwrap_or_else(|| format!("#{}", i + 1));
        format!(
            "the {}set has {} elements: the summary walks the first {SET_EXPAND_MAX} one by one and leaves out the other {rest} ({} to {}, elements {}-{}); --packet walks any of them",
            if name.is_empty() {
                String::new()
            } else {
                format!("@{name} ")
            },
            els.len(),
            text(SET_EXPAND_MAX),
            text(els.len() - 1),
            SET_EXPAND_MAX + 1,
            els.len()
        )
    });
    (paths, left_out)
}

/// True when `a` and `b` cannot both hold for one packet (interfaces, protocol).
pub(super) fn contradicts(a: &Match, b: &Match) -> bool {
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

/// Docker swarm's routing mesh: a DNAT in DOCKER-INGRESS sends the published port to the
/// ingress sandbox on docker_gwbridge, which balances over the service's tasks (IPVS).
fn swarm_ingress(stack: &[Frame]) -> Option<String> {
    stack
        .last()
        .filter(|f| f.chain == "DOCKER-INGRESS")
        .map(|_| {
            "ingress_sbox: the swarm routing mesh, balanced over the service's tasks by IPVS"
                .to_string()
        })
}

/// kube-proxy comments look like "ns1/svc1:p80" or "ns4/svc4:p80 -> 10.180.0.5:80".
pub(super) fn kube_service_name(comment: Option<&str>) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(negated: bool, cond: Cond) -> Match {
        Match { negated, cond }
    }

    fn dport(from: u16, to: u16) -> Cond {
        Cond::Port {
            dir: Dir::Dst,
            ports: vec![PortRange { from, to }],
        }
    }

    #[test]
    fn contradictions_on_ports_interfaces_and_protocols() {
        // netavark's one DN chain: the 8081 rule is not on the path of the 8080 jump.
        assert!(contradicts(
            &m(false, dport(8081, 8081)),
            &m(false, dport(8080, 8080))
        ));
        assert!(!contradicts(
            &m(false, dport(8081, 8081)),
            &m(false, dport(8000, 8100))
        ));
        assert!(contradicts(
            &m(false, dport(80, 80)),
            &m(true, dport(1, 100))
        ));
        let out = |n: &str| Cond::OutIface { name: n.into() };
        assert!(contradicts(
            &m(false, out("docker0")),
            &m(false, out("br1"))
        ));
        assert!(!contradicts(
            &m(false, out("docker0")),
            &m(false, out("br+"))
        ));
        assert!(contradicts(
            &m(false, out("docker0")),
            &m(true, out("docker0"))
        ));
        let proto = |p: &str| Cond::Proto { proto: p.into() };
        assert!(contradicts(
            &m(false, proto("tcp")),
            &m(false, proto("udp"))
        ));
        assert!(!contradicts(&m(true, proto("tcp")), &m(true, proto("udp"))));
    }

    #[test]
    fn kube_comments_name_a_service() {
        assert_eq!(
            kube_service_name(Some("ns4/svc4:p80 -> 10.180.0.5:80")).as_deref(),
            Some("ns4/svc4:p80")
        );
        assert_eq!(kube_service_name(Some("DNAT")), None);
    }
}
