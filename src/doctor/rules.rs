//! The firewall side of doctor: DNAT rules for the port, filter verdicts on the path,
//! split iptables backends, stale UDP conntrack entries.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde::Serialize;

use crate::netns::exec::{self, ExecOptions};
use crate::netns::links::Link;
use crate::netns::sockets::Proto;
use crate::netns::NetNs;

use super::facts::HostFacts;
use super::{Destination, Fault, Fixer, Hop, Packet};

/// A DNAT rule that publishes a port.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnatRule {
    /// The tool whose tables hold it: iptables-nft or iptables-legacy.
    pub backend: String,
    /// Its chain.
    pub chain: String,
    /// 1-based position in the chain (what `iptables -R CHAIN N` takes).
    pub position: usize,
    /// The rule as iptables-save prints it.
    pub text: String,
    /// tcp or udp.
    pub proto: Proto,
    /// The published port (first of a range).
    pub dport: u16,
    /// Last published port of a range.
    pub dport_to: u16,
    /// New destination address.
    pub to_addr: IpAddr,
    /// New destination port (None keeps it).
    pub to_port: Option<u16>,
}

/// One rule of a saved ruleset, split into words.
#[derive(Debug, Clone)]
struct SavedRule {
    backend: String,
    table: String,
    chain: String,
    position: usize,
    text: String,
    words: Vec<String>,
}

/// The host's rules as doctor needs them.
#[derive(Debug, Clone, Default)]
pub struct NatView {
    /// Where they came from, for evidence.
    pub source: String,
    rules: Vec<SavedRule>,
    policies: Vec<(String, String, String, String)>,
    backends_with_rules: Vec<String>,
}

/// Run a tool inside `ns` and return its stdout (None when it is missing or fails).
pub fn capture(ns: &NetNs, argv: &[&str]) -> Option<String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = exec::spawn(ns, cmd, &ExecOptions::default()).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Split an iptables-save rule into words, honouring double quotes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                in_q = !in_q;
                any = true;
            }
            c if c.is_whitespace() && !in_q => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Read the host's rules with iptables-nft-save and iptables-legacy-save.
pub fn load(ns: &NetNs) -> NatView {
    let mut view = NatView::default();
    let mut sources = Vec::new();
    for tool in ["iptables-nft", "iptables-legacy"] {
        let save = format!("{tool}-save");
        let Some(text) = capture(ns, &[&save]) else {
            continue;
        };
        let mut table = String::new();
        let mut count = 0;
        let mut positions: std::collections::HashMap<(String, String), usize> = Default::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_string();
            } else if let Some(p) = line.strip_prefix(':') {
                let w: Vec<&str> = p.split_whitespace().collect();
                if w.len() >= 2 {
                    view.policies
                        .push((tool.into(), table.clone(), w[0].into(), w[1].into()));
                }
            } else if line.starts_with("-A ") {
                let words = split_words(line);
                if words.len() < 2 {
                    continue;
                }
                let chain = words[1].clone();
                let pos = positions.entry((table.clone(), chain.clone())).or_insert(0);
                *pos += 1;
                count += 1;
                view.rules.push(SavedRule {
                    backend: tool.into(),
                    table: table.clone(),
                    chain,
                    position: *pos,
                    text: line.to_string(),
                    words,
                });
            }
        }
        sources.push(format!("{save}: {count} rules"));
        if count > 0 {
            view.backends_with_rules.push(tool.into());
        }
    }
    view.source = sources.join(", ");
    view
}

fn word_after<'a>(words: &'a [String], flag: &str) -> Option<(&'a str, bool)> {
    words.iter().enumerate().find_map(|(i, w)| {
        (w == flag).then(|| {
            let neg = i > 0 && words[i - 1] == "!";
            words.get(i + 1).map(|v| (v.as_str(), neg))
        })?
    })
}

fn parse_proto(s: &str) -> Option<Proto> {
    match s {
        "tcp" | "6" => Some(Proto::Tcp),
        "udp" | "17" => Some(Proto::Udp),
        _ => None,
    }
}

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    match s.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

fn parse_to(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = port.split('-').next()?.parse().ok()?;
    Some((ip, Some(port)))
}

fn iface_match(pat: &str, name: &str) -> bool {
    match pat.strip_suffix('+') {
        Some(p) => name.starts_with(p),
        None => pat == name,
    }
}

fn net_contains(spec: &str, ip: IpAddr) -> bool {
    spec.split(',').any(|s| {
        s.parse::<IpNet>()
            .map(|n| n.contains(&ip))
            .or_else(|_| s.parse::<IpAddr>().map(|a| a == ip))
            .unwrap_or(false)
    })
}

impl NatView {
    /// True when both iptables-legacy and iptables-nft hold rules.
    pub fn split_backends(&self) -> bool {
        self.backends_with_rules.len() > 1
    }

    /// Every DNAT rule in the nat table.
    pub fn dnats(&self) -> Vec<DnatRule> {
        self.rules
            .iter()
            .filter(|r| r.table == "nat")
            .filter_map(|r| {
                let (target, _) = word_after(&r.words, "-j")?;
                if target != "DNAT" {
                    return None;
                }
                let proto = parse_proto(word_after(&r.words, "-p")?.0)?;
                let (from, to) = parse_ports(word_after(&r.words, "--dport")?.0)?;
                let (to_addr, to_port) = parse_to(word_after(&r.words, "--to-destination")?.0)?;
                Some(DnatRule {
                    backend: r.backend.clone(),
                    chain: r.chain.clone(),
                    position: r.position,
                    text: r.text.clone(),
                    proto,
                    dport: from,
                    dport_to: to,
                    to_addr,
                    to_port,
                })
            })
            .collect()
    }

    /// True when some DNAT rule publishes `proto/port` (whatever its other conditions).
    pub fn has_dnat_for_port(&self, proto: Proto, port: u16) -> bool {
        self.dnats()
            .iter()
            .any(|d| d.proto == proto && d.dport <= port && port <= d.dport_to)
    }

    /// Do a rule's address, interface and addrtype conditions hold for `p`?
    fn conds_hold(&self, words: &[String], p: &Packet, host: &HostFacts) -> bool {
        let check = |flag: &str, f: &dyn Fn(&str) -> bool| match word_after(words, flag) {
            Some((v, neg)) => f(v) != neg,
            None => true,
        };
        let local = |ip: IpAddr| ip.is_loopback() || host.addresses.iter().any(|a| a.address == ip);
        check("-d", &|v| net_contains(v, p.dst))
            && check("-s", &|v| net_contains(v, p.src))
            && check("-i", &|v| {
                p.iif.as_deref().is_some_and(|i| iface_match(v, i))
            })
            && check("--dst-type", &|v| v != "LOCAL" || local(p.dst))
            && check("-p", &|v| parse_proto(v) == Some(p.proto))
            && check("--dport", &|v| {
                parse_ports(v).is_some_and(|(a, b)| a <= p.dport && p.dport <= b)
            })
    }

    /// Is `chain` of table `table` reached from the packet's hook (through at most a few jumps)?
    fn reached(&self, table: &str, chain: &str, p: &Packet, host: &HostFacts, depth: u8) -> bool {
        let hook = p.hook.to_uppercase();
        if chain == hook {
            return true;
        }
        if depth > 4 {
            return false;
        }
        self.rules.iter().any(|r| {
            r.table == table
                && word_after(&r.words, "-j").is_some_and(|(t, _)| t == chain)
                && self.conds_hold(&r.words, p, host)
                && self.reached(table, &r.chain, p, host, depth + 1)
        })
    }

    /// The DNAT rule that rewrites `p`, if any.
    pub fn match_dnat(&self, p: &Packet, host: &HostFacts) -> Option<DnatRule> {
        self.dnats().into_iter().find(|d| {
            let rule = self
                .rules
                .iter()
                .find(|r| r.text == d.text && r.backend == d.backend)
                .expect("dnat comes from rules");
            d.proto == p.proto
                && self.conds_hold(&rule.words, p, host)
                && self.reached("nat", &d.chain, p, host, 0)
        })
    }
}

/// argv that rewrites `rule` to send to `addr:port` (`iptables -t nat -R CHAIN N ...`).
pub fn dnat_port_fix(rule: &DnatRule, addr: IpAddr, port: u16) -> Option<Vec<String>> {
    let words = split_words(&rule.text);
    if words.first().map(String::as_str) != Some("-A") || words.len() < 3 {
        return None;
    }
    let tool = if rule.backend == "iptables-legacy" {
        "iptables-legacy"
    } else {
        "iptables"
    };
    let mut argv: Vec<String> = vec![
        tool.into(),
        "-t".into(),
        "nat".into(),
        "-R".into(),
        words[1].clone(),
        rule.position.to_string(),
    ];
    let mut it = words[2..].iter();
    let to = match addr {
        IpAddr::V4(_) => format!("{addr}:{port}"),
        IpAddr::V6(_) => format!("[{addr}]:{port}"),
    };
    while let Some(w) = it.next() {
        argv.push(w.clone());
        if w == "--to-destination" {
            it.next();
            argv.push(to.clone());
        }
    }
    Some(argv)
}

/// A packet as the filter FORWARD chain sees it (after DNAT).
#[derive(Debug, Clone)]
struct Forwarded {
    proto: Proto,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    iif: Option<String>,
    oif: Option<String>,
    /// Conntrack states it has (NEW or ESTABLISHED, plus DNAT).
    states: Vec<&'static str>,
}

/// How the filter table treats a packet.
#[derive(Debug, Clone)]
enum FilterVerdict {
    Accept(Option<SavedRule>),
    Drop(SavedRule),
    Policy(String),
}

impl NatView {
    fn fwd_conds_hold(words: &[String], f: &Forwarded) -> bool {
        let check = |flag: &str, g: &dyn Fn(&str) -> bool| match word_after(words, flag) {
            Some((v, neg)) => g(v) != neg,
            None => true,
        };
        let states = |v: &str| v.split(',').any(|s| f.states.contains(&s));
        check("-d", &|v| net_contains(v, f.dst))
            && check("-s", &|v| net_contains(v, f.src))
            && check("-i", &|v| {
                f.iif.as_deref().is_some_and(|i| iface_match(v, i))
            })
            && check("-o", &|v| {
                f.oif.as_deref().is_some_and(|o| iface_match(v, o))
            })
            && check("-p", &|v| parse_proto(v) == Some(f.proto))
            && check("--dport", &|v| {
                parse_ports(v).is_some_and(|(a, b)| a <= f.dport && f.dport <= b)
            })
            && check("--ctstate", &states)
            && check("--state", &states)
            && check("--dst-type", &|v| v != "LOCAL")
    }

    /// Evaluate `chain` of the filter table of `backend`; None = fell through or RETURN.
    fn eval(&self, backend: &str, chain: &str, f: &Forwarded, depth: u8) -> Option<FilterVerdict> {
        if depth > 8 {
            return None;
        }
        for r in self
            .rules
            .iter()
            .filter(|r| r.backend == backend && r.table == "filter" && r.chain == chain)
        {
            if !Self::fwd_conds_hold(&r.words, f) {
                continue;
            }
            let Some((target, _)) =
                word_after(&r.words, "-j").or_else(|| word_after(&r.words, "-g"))
            else {
                continue;
            };
            match target {
                "ACCEPT" => return Some(FilterVerdict::Accept(Some(r.clone()))),
                "DROP" | "REJECT" => return Some(FilterVerdict::Drop(r.clone())),
                "RETURN" => return None,
                "LOG" | "MARK" | "CONNMARK" | "NFLOG" => {}
                user => {
                    if let Some(v) = self.eval(backend, user, f, depth + 1) {
                        return Some(v);
                    }
                    if word_after(&r.words, "-g").is_some() {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// The verdict of the filter FORWARD chain of every backend that has one.
    fn forward_verdicts(&self, f: &Forwarded) -> Vec<(String, FilterVerdict)> {
        let mut out = Vec::new();
        for backend in ["iptables-nft", "iptables-legacy"] {
            let policy = self
                .policies
                .iter()
                .find(|(b, t, c, _)| b == backend && t == "filter" && c == "FORWARD")
                .map(|p| p.3.clone());
            let Some(policy) = policy else { continue };
            let v = self
                .eval(backend, "FORWARD", f, 0)
                .unwrap_or(if policy == "DROP" {
                    FilterVerdict::Policy(policy)
                } else {
                    FilterVerdict::Accept(None)
                });
            out.push((backend.to_string(), v));
        }
        out
    }
}

fn tool_of(backend: &str) -> &'static str {
    if backend == "iptables-legacy" {
        "iptables-legacy"
    } else {
        "iptables"
    }
}

/// The filter verdicts on the path: FORWARD for the first packet and for the answers.
pub(crate) fn firewall_hops(
    nat: &NatView,
    packet: &Packet,
    dest: &Destination,
    forwarded: bool,
    out_if: Option<&Link>,
    fixer: &Fixer,
) -> Vec<Hop> {
    if !forwarded {
        return Vec::new();
    }
    let there = Forwarded {
        proto: packet.proto,
        src: packet.src,
        dst: dest.addr,
        dport: dest.port,
        iif: packet.iif.clone(),
        oif: out_if.map(|l| l.name.clone()),
        states: vec!["NEW", "DNAT"],
    };
    let back = Forwarded {
        proto: packet.proto,
        src: dest.addr,
        dst: packet.src,
        dport: 0,
        iif: there.oif.clone(),
        oif: there.iif.clone(),
        states: vec!["ESTABLISHED", "DNAT"],
    };
    let mut evidence = Vec::new();
    for (dir, f) in [("the first packet", &there), ("the answers", &back)] {
        for (backend, v) in nat.forward_verdicts(f) {
            let tool = tool_of(&backend);
            match v {
                FilterVerdict::Accept(rule) => evidence.push(format!(
                    "{backend} filter FORWARD accepts {dir}: {}",
                    rule.map(|r| r.text)
                        .unwrap_or_else(|| "policy ACCEPT".into())
                )),
                FilterVerdict::Drop(rule) => {
                    let mut argv: Vec<String> = vec![tool.into(), "-D".into()];
                    argv.extend(rule.words[1..].iter().cloned());
                    let user_chain = rule.chain.ends_with("-USER");
                    return vec![Hop::fail(
                        "firewall",
                        "firewall",
                        Fault::FirewallDrop,
                        format!(
                            "{} {dir} in filter {}{}: {}",
                            if rule.words.iter().any(|w| w == "REJECT") {
                                "a rule rejects"
                            } else {
                                "a rule drops"
                            },
                            rule.chain,
                            if user_chain { " (the user chain)" } else { "" },
                            rule.text
                        ),
                    )
                    .with_evidence(format!(
                        "{backend}, filter {} rule {}",
                        rule.chain, rule.position
                    ))
                    .with_fix(Some(fixer.fix_owned(
                        &format!("delete that rule from {}", rule.chain),
                        argv,
                        false,
                    )))];
                }
                FilterVerdict::Policy(p) => {
                    return vec![Hop::fail(
                        "firewall",
                        "firewall",
                        Fault::ForwardPolicyDrop,
                        format!(
                            "the FORWARD policy is {p} and no rule accepts {dir} ({} -> {}:{})",
                            f.src,
                            f.dst,
                            if f.dport > 0 {
                                f.dport.to_string()
                            } else {
                                "*".into()
                            }
                        ),
                    )
                    .with_evidence(format!("{backend}: :FORWARD {p}"))
                    .with_fix(Some(fixer.fix(
                        "accept forwarded connections that a DNAT rule published (both directions)",
                        &[
                            tool,
                            "-A",
                            "FORWARD",
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "DNAT",
                            "-j",
                            "ACCEPT",
                        ],
                    )))];
                }
            }
        }
    }
    if evidence.is_empty() {
        return Vec::new();
    }
    let mut hop = Hop::ok(
        "firewall",
        "firewall",
        "filter FORWARD accepts both directions",
    );
    hop.evidence = evidence;
    vec![hop]
}

/// One conntrack entry for the published UDP port.
#[derive(Debug, Clone, PartialEq)]
struct CtEntry {
    reply_src: Option<IpAddr>,
    reply_sport: Option<u16>,
    text: String,
}

fn parse_conntrack(text: &str) -> Vec<CtEntry> {
    text.lines()
        .filter(|l| l.starts_with("udp") || l.starts_with("ipv4") || l.starts_with("ipv6"))
        .map(|l| {
            let srcs: Vec<&str> = l
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("src="))
                .collect();
            let sports: Vec<&str> = l
                .split_whitespace()
                .filter_map(|w| w.strip_prefix("sport="))
                .collect();
            CtEntry {
                reply_src: srcs.get(1).and_then(|s| s.parse().ok()),
                reply_sport: sports.get(1).and_then(|s| s.parse().ok()),
                text: l.trim().to_string(),
            }
        })
        .collect()
}

/// Stale UDP conntrack entries: an entry for the published port whose reply comes from
/// somewhere other than the current destination (made before the DNAT rule, or for an
/// old container) keeps every later datagram of that flow going there.
pub(crate) fn conntrack_hop(ns: &NetNs, p: &Packet, dest: &Destination, fixer: &Fixer) -> Hop {
    let port = p.dport.to_string();
    let Some(text) = capture(
        ns,
        &["conntrack", "-L", "-p", "udp", "--orig-port-dst", &port],
    ) else {
        return Hop::ok(
            "conntrack",
            "conntrack",
            "not checked: the conntrack tool is missing or failed",
        );
    };
    let entries = parse_conntrack(&text);
    let stale: Vec<&CtEntry> = entries
        .iter()
        .filter(|e| e.reply_src != Some(dest.addr) || e.reply_sport != Some(dest.port))
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
    .with_fix(Some(fixer.fix(
        "delete the stale entries",
        &["conntrack", "-D", "-p", "udp", "--orig-port-dst", &port],
    )));
    hop.evidence = stale.iter().take(5).map(|e| e.text.clone()).collect();
    hop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_comments() {
        let w = split_words(r#"-A DOCKER -m comment --comment "a \"b\" c" -j RETURN"#);
        assert_eq!(
            w,
            vec![
                "-A",
                "DOCKER",
                "-m",
                "comment",
                "--comment",
                r#"a "b" c"#,
                "-j",
                "RETURN"
            ]
        );
    }

    #[test]
    fn wrong_port_fix_replaces_destination() {
        let r = DnatRule {
            backend: "iptables-nft".into(),
            chain: "NETTOOL".into(),
            position: 2,
            text: "-A NETTOOL ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:81".into(),
            proto: Proto::Tcp,
            dport: 8080,
            dport_to: 8080,
            to_addr: "10.0.0.2".parse().unwrap(),
            to_port: Some(81),
        };
        let argv = dnat_port_fix(&r, r.to_addr, 80).unwrap();
        assert_eq!(
            argv.join(" "),
            "iptables -t nat -R NETTOOL 2 ! -i br0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"
        );
    }

    #[test]
    fn conntrack_lines() {
        let e = parse_conntrack("udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=40000 dport=5353 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5353 dport=40000 mark=0 use=1\n");
        assert_eq!(e[0].reply_src, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(e[0].reply_sport, Some(5353));
    }
}
