//! Parser for `iptables-save` output (with or without `-c` counters) and `iptables -S` listings.
//!
//! Tolerant by design: a line it cannot read becomes a [`Problem`] naming the line and the rest
//! of the file still loads; a match module it does not know becomes [`Cond::Unknown`].

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::*;

/// Parse iptables-save text (several tables) or `iptables -S` text (one table, see [`parse_rules`]).
pub fn parse(text: &str) -> Ruleset {
    let looks_like_save = text
        .lines()
        .any(|l| l.trim_start().starts_with('*') && l.trim().len() > 1);
    if looks_like_save {
        parse_save(text)
    } else {
        let table = guess_table(text);
        parse_rules(text, table)
    }
}

/// `iptables -S` does not name its table: guess it from what the rules do.
pub fn guess_table(text: &str) -> &'static str {
    guess_table_why(text).0
}

/// [`guess_table`] with the reason, in words.
pub(crate) fn guess_table_why(text: &str) -> (&'static str, String) {
    let has = |w: &str| {
        text.lines().any(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(w)
        })
    };
    for w in ["-j DNAT", "-j SNAT", "-j MASQUERADE", "-j REDIRECT"] {
        if has(w) {
            return ("nat", format!("it has '{w}'"));
        }
    }
    for w in ["-j CT", "-j NOTRACK"] {
        if has(w) {
            return ("raw", format!("it has '{w}'"));
        }
    }
    for w in [
        "-j MARK",
        "-j CONNMARK",
        "-j TOS",
        "-j TTL",
        "-j TPROXY",
        "-j DSCP",
        "-j TCPMSS",
    ] {
        if has(w) {
            return ("mangle", format!("it has '{w}'"));
        }
    }
    // The built-in chains of each table, from its -P lines.
    let p = |c: &str| has(&format!("-P {c} "));
    match (
        p("PREROUTING"),
        p("INPUT"),
        p("FORWARD"),
        p("OUTPUT"),
        p("POSTROUTING"),
    ) {
        (true, _, true, _, _) => ("mangle", "its -P lines list PREROUTING and FORWARD".into()),
        (true, true, false, _, _) | (_, _, false, _, true) => (
            "nat",
            "its -P lines list PREROUTING/INPUT/OUTPUT/POSTROUTING".into(),
        ),
        (true, false, false, _, false) => {
            ("raw", "its -P lines list PREROUTING and OUTPUT only".into())
        }
        _ => (
            "filter",
            "no NAT target and no PREROUTING/POSTROUTING policy".into(),
        ),
    }
}

/// Built-in chains of an iptables table.
fn builtin_hooks(table: &str) -> &'static [Hook] {
    match table {
        "filter" | "security" => &[Hook::Input, Hook::Forward, Hook::Output],
        "nat" => &[
            Hook::Prerouting,
            Hook::Input,
            Hook::Output,
            Hook::Postrouting,
        ],
        "raw" => &[Hook::Prerouting, Hook::Output],
        "mangle" => &[
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ],
        _ => &[],
    }
}

fn base_for(table: &str, chain: &str) -> Option<BaseChain> {
    let hook = Hook::from_name(chain)?;
    if chain != hook.chain_name() || !builtin_hooks(table).contains(&hook) {
        return None;
    }
    Some(BaseChain {
        hook,
        kind: if table == "nat" {
            ChainType::Nat
        } else {
            ChainType::Filter
        },
        priority: iptables_priority(table, hook),
    })
}

struct SaveParser {
    /// "ip", or "ip6" for ip6tables output.
    family: &'static str,
    rs: Ruleset,
    current: Option<usize>,
}

impl SaveParser {
    fn table_mut(&mut self) -> Option<&mut Table> {
        self.current.map(|i| &mut self.rs.tables[i])
    }

    fn open_table(&mut self, name: &str) {
        let family = self.family;
        let mut t = Table::new(name, family, Backend::Iptables);
        // Built-in chains exist even when the dump does not list them (iptables -S of one table).
        for hook in builtin_hooks(name) {
            let i = t.chain_index_or_add(hook.chain_name(), 0);
            t.chains[i].base = base_for(name, hook.chain_name());
            t.chains[i].policy = Some(Policy {
                verdict: "ACCEPT".into(),
                counters: None,
            });
        }
        self.rs.tables.push(t);
        self.current = Some(self.rs.tables.len() - 1);
    }

    fn problem(&mut self, line: usize, message: String) {
        self.rs.problems.push(Problem { line, message });
    }

    fn line(&mut self, no: usize, raw: &str) {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim();
            if name.is_empty() {
                self.problem(no, "'*' without a table name".into());
                return;
            }
            self.open_table(name);
            return;
        }
        if line == "COMMIT" {
            self.current = None;
            return;
        }
        if self.current.is_none() {
            self.problem(
                no,
                format!(
                    "'{}' outside a table: expected a '*TABLE' line first",
                    short(line)
                ),
            );
            return;
        }
        if let Some(decl) = line.strip_prefix(':') {
            self.chain_decl(no, decl);
            return;
        }
        // `[pkts:bytes] -A CHAIN ...` (iptables-save -c)
        let (counters, rest) = match split_counters(line) {
            Ok(x) => x,
            Err(m) => {
                self.problem(no, m);
                return;
            }
        };
        let toks = match tokenize(rest) {
            Ok(t) => t,
            Err(m) => {
                self.problem(no, m);
                return;
            }
        };
        self.command(no, line, counters, &toks);
    }

    fn chain_decl(&mut self, no: usize, decl: &str) {
        let mut it = decl.split_whitespace();
        let (Some(name), Some(policy)) = (it.next(), it.next()) else {
            self.problem(
                no,
                format!("chain declaration ':{decl}' needs a name and a policy (':NAME ACCEPT [0:0]' or ':NAME - [0:0]')"),
            );
            return;
        };
        let counters = it.next().and_then(|c| parse_counter_pair(c).ok());
        let name = name.to_string();
        let policy = policy.to_string();
        let Some(t) = self.table_mut() else { return };
        let tname = t.name.clone();
        let i = t.chain_index_or_add(&name, no);
        let c = &mut t.chains[i];
        c.line = no;
        c.base = base_for(&tname, &name);
        c.policy = if policy == "-" {
            None
        } else {
            Some(Policy {
                verdict: policy,
                counters,
            })
        };
    }

    fn command(&mut self, no: usize, line: &str, counters: Option<[u64; 2]>, toks: &[String]) {
        let Some(cmd) = toks.first() else { return };
        match cmd.as_str() {
            "-A" | "--append" | "-I" | "--insert" => {
                let Some(chain) = toks.get(1) else {
                    self.problem(no, format!("'{cmd}' without a chain name"));
                    return;
                };
                let mut args = &toks[2..];
                let insert_at = if (cmd == "-I" || cmd == "--insert")
                    && args.first().is_some_and(|a| a.parse::<usize>().is_ok())
                {
                    let n = args[0].parse::<usize>().unwrap_or(1);
                    args = &args[1..];
                    Some(n.saturating_sub(1))
                } else if cmd == "-I" || cmd == "--insert" {
                    Some(0)
                } else {
                    None
                };
                match parse_rule_args(args) {
                    Ok(mut rule) => {
                        rule.line = no;
                        rule.text = line.to_string();
                        if rule.counters.is_none() {
                            rule.counters = counters;
                        }
                        let chain = chain.clone();
                        let Some(t) = self.table_mut() else { return };
                        let known = t.index.contains_key(&chain);
                        let i = t.chain_index_or_add(&chain, no);
                        let rules = &mut t.chains[i].rules;
                        match insert_at {
                            Some(p) if p <= rules.len() => rules.insert(p, rule),
                            _ => rules.push(rule),
                        }
                        if !known {
                            let tn = t.name.clone();
                            self.rs.warnings.push(format!(
                                "line {no}: chain {chain} used in table {tn} without being declared (iptables-restore would refuse this)"
                            ));
                        }
                    }
                    Err(m) => self.problem(no, format!("{m} in: {}", short(line))),
                }
            }
            "-N" | "--new-chain" => match toks.get(1) {
                Some(name) => {
                    let name = name.clone();
                    if let Some(t) = self.table_mut() {
                        let i = t.chain_index_or_add(&name, no);
                        t.chains[i].line = no;
                    }
                }
                None => self.problem(no, "'-N' without a chain name".into()),
            },
            "-P" | "--policy" => match (toks.get(1), toks.get(2)) {
                (Some(name), Some(policy)) => {
                    let (name, policy) = (name.clone(), policy.clone());
                    let counters = match (toks.get(3).map(String::as_str), toks.get(4), toks.get(5))
                    {
                        (Some("-c"), Some(p), Some(b)) => p.parse().ok().zip(b.parse().ok()),
                        _ => None,
                    }
                    .map(|(p, b)| [p, b]);
                    if let Some(t) = self.table_mut() {
                        let tname = t.name.clone();
                        let i = t.chain_index_or_add(&name, no);
                        let c = &mut t.chains[i];
                        c.line = no;
                        c.base = base_for(&tname, &name);
                        c.policy = Some(Policy {
                            verdict: policy,
                            counters,
                        });
                    }
                }
                _ => self.problem(no, "'-P' needs a chain and a policy".into()),
            },
            "-X" | "-F" | "-Z" => {}
            other => self.problem(
                no,
                format!(
                    "unexpected '{}': a rule line starts with -A CHAIN, a chain line with ':' (iptables-save format) or -N/-P (iptables -S format)",
                    short(other)
                ),
            ),
        }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s.to_string()
    }
}

fn parse_counter_pair(s: &str) -> Result<[u64; 2], String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or_else(|| format!("bad counters '{s}' (expected [packets:bytes])"))?;
    let (p, b) = inner
        .split_once(':')
        .ok_or_else(|| format!("bad counters '{s}' (expected [packets:bytes])"))?;
    Ok([
        p.parse()
            .map_err(|_| format!("bad packet counter in '{s}'"))?,
        b.parse()
            .map_err(|_| format!("bad byte counter in '{s}'"))?,
    ])
}

fn split_counters(line: &str) -> Result<(Option<[u64; 2]>, &str), String> {
    if line.starts_with('[') {
        let end = line
            .find(']')
            .ok_or_else(|| "unterminated '[' counters".to_string())?;
        let c = parse_counter_pair(&line[..=end])?;
        Ok((Some(c), line[end + 1..].trim_start()))
    } else {
        Ok((None, line))
    }
}

/// Split a line like a shell would for iptables-save: double/single quotes, backslash escapes.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_tok = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_tok = true;
                let q = c;
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated {q} quote")),
                        Some(x) if x == q => break,
                        Some('\\') if q == '"' => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("backslash at end of line".into()),
                        },
                        Some(x) => cur.push(x),
                    }
                }
            }
            '\\' => {
                in_tok = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_tok {
                    out.push(std::mem::take(&mut cur));
                    in_tok = false;
                }
            }
            c => {
                in_tok = true;
                cur.push(c);
            }
        }
    }
    if in_tok {
        out.push(cur);
    }
    Ok(out)
}

/// Is this ip6tables output (its "# Generated by ip6tables-save" header, or a -6 hint)?
pub(crate) fn is_ip6tables(text: &str) -> bool {
    text.lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
        .any(|l| l.contains("ip6tables"))
}

/// Parse a whole iptables-save dump (ip6tables-save when its header says so).
pub fn parse_save(text: &str) -> Ruleset {
    let fam = if is_ip6tables(text) { "ip6" } else { "ip" };
    parse_save_family(text, fam)
}

/// Parse a whole iptables-save dump of a known family ("ip" or "ip6").
pub fn parse_save_family(text: &str, family: &'static str) -> Ruleset {
    let mut p = SaveParser {
        family,
        rs: Ruleset {
            source: String::new(),
            ..Default::default()
        },
        current: None,
    };
    for (i, l) in text.lines().enumerate() {
        p.line(i + 1, l);
    }
    if p.current.is_some() {
        p.rs.warnings
            .push("the last table has no COMMIT line (truncated dump?)".into());
    }
    finish(p.rs)
}

/// Parse `iptables -S` output of one table (`-P`, `-N`, `-A` lines).
pub fn parse_rules(text: &str, table: &str) -> Ruleset {
    let mut p = SaveParser {
        family: "ip",
        rs: Ruleset::default(),
        current: None,
    };
    p.open_table(table);
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t == "COMMIT" || t.starts_with('*') {
            p.problem(
                i + 1,
                "iptables-save syntax inside an iptables -S listing".into(),
            );
            continue;
        }
        p.line(i + 1, l);
        if p.current.is_none() {
            p.current = Some(0);
        }
    }
    finish(p.rs)
}

fn finish(mut rs: Ruleset) -> Ruleset {
    for t in &mut rs.tables {
        let v6 = t.chains.iter().flat_map(|c| &c.rules).any(|r| {
            r.matches.iter().any(|m| {
                matches!(m.cond, Cond::Addr { net: IpNet::V6(_), .. })
                    || matches!(m.cond, Cond::AddrRange { from: IpAddr::V6(_), .. })
            }) || matches!(&r.action, Action::Dnat { to } | Action::Snat { to } if matches!(to.addr, Some(IpAddr::V6(_))))
        });
        if v6 {
            t.family = "ip6".into();
        }
        t.reindex();
    }
    rs
}

fn is_option(t: &str) -> bool {
    (t.starts_with('-') && t.len() > 1 && t.parse::<i64>().is_err()) || t == "!"
}

struct Args<'a> {
    toks: &'a [String],
    pos: usize,
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let t = self.toks.get(self.pos)?;
        self.pos += 1;
        Some(t)
    }
    fn value(&mut self, opt: &str) -> Result<&'a str, String> {
        match self.toks.get(self.pos) {
            Some(v) if v != "!" => {
                self.pos += 1;
                Ok(v)
            }
            _ => Err(format!("option {opt} needs a value")),
        }
    }
    /// Values up to the next option (for unknown options and tolerant comments).
    fn rest_values(&mut self) -> Vec<&'a str> {
        let mut v = Vec::new();
        while let Some(t) = self.toks.get(self.pos) {
            if is_option(t) {
                break;
            }
            v.push(t.as_str());
            self.pos += 1;
        }
        v
    }
}

/// Parse an address or network as iptables writes it (`10.0.0.1`, `10.0.0.0/8`, `10.0.0.0/255.0.0.0`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    if let Some((a, m)) = s.split_once('/') {
        if let (Ok(a), Ok(m)) = (a.parse::<IpAddr>(), m.parse::<IpAddr>()) {
            let bits = match m {
                IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                IpAddr::V6(m) => u128::from(m).count_ones() as u8,
            };
            if let Ok(n) = IpNet::new(a, bits) {
                return Ok(n);
            }
        }
    }
    Err(format!("bad address '{s}'"))
}

/// Parse `80`, `80:90`, `80-90` (nft), `:1024`, a service name we know.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let named = |p: &str| -> Result<u16, String> {
        if let Ok(n) = p.parse::<u16>() {
            return Ok(n);
        }
        Ok(match p {
            "http" | "www" => 80,
            "https" => 443,
            "domain" => 53,
            "ssh" => 22,
            "ftp" => 21,
            "smtp" => 25,
            "ntp" => 123,
            "bootps" => 67,
            "bootpc" => 68,
            _ => return Err(format!("bad port '{p}'")),
        })
    };
    let sep = if s.contains(':') { ':' } else { '-' };
    if let Some((a, b)) = s.split_once(sep) {
        let from = if a.is_empty() { 0 } else { named(a)? };
        let to = if b.is_empty() { 65535 } else { named(b)? };
        if from > to {
            return Err(format!("port range '{s}' runs backwards"));
        }
        Ok(PortRange { from, to })
    } else {
        let p = named(s)?;
        Ok(PortRange { from: p, to: p })
    }
}

fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    s.split(',').map(parse_port_range).collect()
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("bad number '{s}'"))
}

/// `V` or `V/M` (mask defaults to all ones).
fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

/// Parse a DNAT/SNAT `--to-destination` value: `[ADDR[-ADDR]][:PORT[-PORT]]`, IPv6 in brackets.
pub fn parse_nat_to(s: &str) -> Result<NatTo, String> {
    let bad = || format!("bad NAT destination '{s}' (expected ADDR[-ADDR][:PORT[-PORT]])");
    let (addr_part, port_part) = if let Some(rest) = s.strip_prefix('[') {
        let (a, after) = rest.split_once(']').ok_or_else(bad)?;
        (a, after.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        (s, None) // bare IPv6
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        }
    };
    let (addr, addr_to) = if addr_part.is_empty() {
        (None, None)
    } else if let Some((a, b)) = addr_part.split_once('-') {
        (
            Some(a.parse::<IpAddr>().map_err(|_| bad())?),
            Some(b.parse::<IpAddr>().map_err(|_| bad())?),
        )
    } else {
        (Some(addr_part.parse::<IpAddr>().map_err(|_| bad())?), None)
    };
    let ports = match port_part {
        Some(p) if !p.is_empty() => {
            // "80-90/1000" (port-range with base) - keep the range.
            let p = p.split('/').next().unwrap_or(p);
            Some(parse_port_range(&p.replace(':', "-")).map_err(|_| bad())?)
        }
        _ => None,
    };
    Ok(NatTo {
        addr,
        addr_to,
        ports,
        text: s.to_string(),
    })
}

fn states(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_ascii_uppercase())
        .collect()
}

/// Parse the arguments of one rule (everything after `-A CHAIN`).
pub fn parse_rule_args(toks: &[String]) -> Result<Rule, String> {
    let mut a = Args { toks, pos: 0 };
    let mut matches: Vec<Match> = Vec::new();
    let mut comment: Option<String> = None;
    let mut counters = None;
    let mut module = String::new();
    let mut negate = false;
    let mut target: Option<String> = None;
    let mut goto = false;
    let mut topts: Vec<(String, Vec<String>)> = Vec::new();
    let mut stat_mode = String::new();
    let mut nth_every: Option<u32> = None;
    let mut nth_packet = 0u32;

    while let Some(t) = a.next() {
        if t == "!" {
            negate = true;
            continue;
        }
        let neg = std::mem::take(&mut negate);
        let mut push = |cond: Cond| matches.push(Match { negated: neg, cond });
        if target.is_some() && t.starts_with("--") {
            // target options
            let vals = a.rest_values().iter().map(|s| s.to_string()).collect();
            topts.push((t.to_string(), vals));
            continue;
        }
        match t {
            "-s" | "--source" | "--src" => {
                push(Cond::Addr {
                    dir: Dir::Src,
                    net: parse_net(a.value(t)?)?,
                });
            }
            "-d" | "--destination" | "--dst" => {
                push(Cond::Addr {
                    dir: Dir::Dst,
                    net: parse_net(a.value(t)?)?,
                });
            }
            "-i" | "--in-interface" => push(Cond::InIface {
                name: a.value(t)?.to_string(),
            }),
            "-o" | "--out-interface" => push(Cond::OutIface {
                name: a.value(t)?.to_string(),
            }),
            "-p" | "--protocol" => push(Cond::Proto {
                proto: a.value(t)?.to_ascii_lowercase(),
            }),
            "-f" | "--fragment" => push(Cond::Unknown {
                text: "fragment".into(),
            }),
            "-m" | "--match" => {
                module = a.value(t)?.to_string();
                if neg {
                    return Err("'!' before -m".into());
                }
            }
            "-j" | "--jump" => target = Some(a.value(t)?.to_string()),
            "-g" | "--goto" => {
                target = Some(a.value(t)?.to_string());
                goto = true;
            }
            "-c" | "--set-counters" => {
                let p = a.value(t)?;
                let b = a.value(t)?;
                counters = Some([
                    p.parse().map_err(|_| format!("bad counter '{p}'"))?,
                    b.parse().map_err(|_| format!("bad counter '{b}'"))?,
                ]);
            }
            "--dport" | "--destination-port" => push(Cond::Port {
                dir: Dir::Dst,
                ports: vec![parse_port_range(a.value(t)?)?],
            }),
            "--sport" | "--source-port" => push(Cond::Port {
                dir: Dir::Src,
                ports: vec![parse_port_range(a.value(t)?)?],
            }),
            "--dports" | "--destination-ports" => push(Cond::Port {
                dir: Dir::Dst,
                ports: parse_ports(a.value(t)?)?,
            }),
            "--sports" | "--source-ports" => push(Cond::Port {
                dir: Dir::Src,
                ports: parse_ports(a.value(t)?)?,
            }),
            "--ctstate" if module == "conntrack" => push(Cond::CtState {
                states: states(a.value(t)?),
            }),
            "--state" if module == "state" || module.is_empty() => push(Cond::CtState {
                states: states(a.value(t)?),
            }),
            "--src-type" | "--dst-type" if module == "addrtype" => push(Cond::AddrType {
                dir: if t == "--src-type" {
                    Dir::Src
                } else {
                    Dir::Dst
                },
                types: states(a.value(t)?),
            }),
            "--limit-iface-in" | "--limit-iface-out" if module == "addrtype" => {}
            "--mark" if module == "mark" => {
                let (value, mask) = parse_mark(a.value(t)?)?;
                push(Cond::Mark { value, mask });
            }
            "--match-set" if module == "set" => {
                let name = a.value(t)?.to_string();
                let dirs = a
                    .value(t)?
                    .split(',')
                    .map(|d| if d == "src" { Dir::Src } else { Dir::Dst })
                    .collect();
                push(Cond::Set { name, dirs });
            }
            "--mode" if module == "statistic" => stat_mode = a.value(t)?.to_string(),
            "--probability" if module == "statistic" => {
                let v = a.value(t)?;
                let p: f64 = v.parse().map_err(|_| format!("bad probability '{v}'"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("probability {v} outside 0..1"));
                }
                push(Cond::Probability { p });
            }
            "--every" if module == "statistic" => nth_every = Some(parse_u32(a.value(t)?)?),
            "--packet" if module == "statistic" => nth_packet = parse_u32(a.value(t)?)?,
            "--comment" if module == "comment" => {
                // Tolerant: unquoted multi-word comments (seen in hand-written dumps).
                let words = a.rest_values();
                if words.is_empty() {
                    return Err("--comment needs a value".into());
                }
                comment = Some(words.join(" "));
            }
            "--src-range" | "--dst-range" if module == "iprange" => {
                let v = a.value(t)?;
                let (x, y) = v
                    .split_once('-')
                    .ok_or_else(|| format!("bad range '{v}'"))?;
                push(Cond::AddrRange {
                    dir: if t == "--src-range" {
                        Dir::Src
                    } else {
                        Dir::Dst
                    },
                    from: x.parse().map_err(|_| format!("bad address '{x}'"))?,
                    to: y.parse().map_err(|_| format!("bad address '{y}'"))?,
                });
            }
            other if other.starts_with('-') => {
                let vals = a.rest_values();
                let m = if module.is_empty() {
                    String::new()
                } else {
                    format!("-m {module} ")
                };
                push(Cond::Unknown {
                    text: format!("{m}{other} {}", vals.join(" ")).trim().to_string(),
                });
            }
            other => return Err(format!("unexpected word '{other}'")),
        }
    }
    if negate {
        return Err("'!' at the end of the rule".into());
    }
    if stat_mode == "nth" {
        matches.push(Match {
            negated: false,
            cond: Cond::Nth {
                every: nth_every.unwrap_or(1),
                packet: nth_packet,
            },
        });
    }
    let action = match target {
        None => Action::None,
        Some(t) => build_action(&t, goto, &topts)?,
    };
    Ok(Rule {
        line: 0,
        text: String::new(),
        matches,
        action,
        comment,
        counters,
    })
}

fn opt<'a>(topts: &'a [(String, Vec<String>)], names: &[&str]) -> Option<&'a str> {
    topts
        .iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .and_then(|(_, v)| v.first().map(String::as_str))
}

fn build_action(t: &str, goto: bool, topts: &[(String, Vec<String>)]) -> Result<Action, String> {
    let ports = |names: &[&str]| -> Result<Option<PortRange>, String> {
        opt(topts, names)
            .map(|p| parse_port_range(&p.replace(':', "-")))
            .transpose()
    };
    Ok(match t {
        "ACCEPT" => Action::Accept,
        "DROP" => Action::Drop,
        "RETURN" => Action::Return,
        "REJECT" => Action::Reject {
            with: opt(topts, &["--reject-with"]).map(str::to_string),
        },
        "DNAT" => Action::Dnat {
            to: parse_nat_to(
                opt(topts, &["--to-destination", "--to"]).ok_or("DNAT without --to-destination")?,
            )?,
        },
        "SNAT" => Action::Snat {
            to: parse_nat_to(
                opt(topts, &["--to-source", "--to"]).ok_or("SNAT without --to-source")?,
            )?,
        },
        "MASQUERADE" => Action::Masquerade {
            ports: ports(&["--to-ports"])?,
        },
        "REDIRECT" => Action::Redirect {
            ports: ports(&["--to-ports"])?,
        },
        "MARK" => {
            let (value, mask) = if let Some(v) = opt(topts, &["--set-xmark"]) {
                parse_mark(v)?
            } else if let Some(v) = opt(topts, &["--set-mark"]) {
                // --set-mark V/M: clear M, then OR V  ==  xmark V/(M|V)
                let (v, m) = parse_mark(v)?;
                (v, m | v)
            } else if let Some(v) = opt(topts, &["--or-mark"]) {
                let v = parse_u32(v)?;
                (v, v)
            } else if let Some(v) = opt(topts, &["--xor-mark"]) {
                (parse_u32(v)?, 0)
            } else if let Some(v) = opt(topts, &["--and-mark"]) {
                (0, !parse_u32(v)?)
            } else {
                return Err(
                    "MARK without --set-xmark/--set-mark/--or-mark/--and-mark/--xor-mark".into(),
                );
            };
            Action::Mark { value, mask }
        }
        "LOG" | "NFLOG" | "ULOG" => Action::Log {
            prefix: opt(topts, &["--log-prefix", "--nflog-prefix"]).map(str::to_string),
        },
        name if name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !topts.is_empty()
            || matches!(
                name,
                "CT" | "NOTRACK"
                    | "TCPMSS"
                    | "CHECKSUM"
                    | "CONNMARK"
                    | "TPROXY"
                    | "NETMAP"
                    | "TRACE"
                    | "CLASSIFY"
                    | "DSCP"
                    | "TOS"
                    | "TTL"
                    | "HL"
                    | "SET"
                    | "AUDIT"
                    | "NFQUEUE"
                    | "QUEUE"
                    | "CLUSTERIP"
                    | "MIRROR"
                    | "TEE"
            ) =>
        {
            let text = std::iter::once(name.to_string())
                .chain(topts.iter().map(|(k, v)| format!("{k} {}", v.join(" "))))
                .collect::<Vec<_>>()
                .join(" ");
            let terminal = matches!(name, "NFQUEUE" | "QUEUE" | "TPROXY" | "NETMAP");
            Action::Other { text, terminal }
        }
        chain => {
            if goto {
                Action::Goto {
                    chain: chain.to_string(),
                }
            } else {
                Action::Jump {
                    chain: chain.to_string(),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        parse_rule_args(&tokenize(s).unwrap()).unwrap()
    }

    #[test]
    fn tokenizer_quotes() {
        assert_eq!(
            tokenize(r#"-m comment --comment "dnat name: \"test\"" -j X"#).unwrap(),
            vec![
                "-m",
                "comment",
                "--comment",
                "dnat name: \"test\"",
                "-j",
                "X"
            ]
        );
        assert!(tokenize("-m comment --comment \"open").is_err());
    }

    #[test]
    fn docker_dnat() {
        let r =
            rule("! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80");
        assert_eq!(r.matches.len(), 3);
        assert!(r.matches[0].negated);
        assert_eq!(
            r.matches[0].cond,
            Cond::InIface {
                name: "docker0".into()
            }
        );
        match r.action {
            Action::Dnat { to } => {
                assert_eq!(to.addr, Some("172.17.0.2".parse().unwrap()));
                assert_eq!(to.ports, Some(PortRange { from: 80, to: 80 }));
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn marks_and_statistic_and_multiport() {
        let r = rule("-j MARK --set-xmark 0x2000/0x2000");
        assert_eq!(
            r.action,
            Action::Mark {
                value: 0x2000,
                mask: 0x2000
            }
        );
        let r = rule("-j MARK --or-mark 0x4000");
        assert_eq!(
            r.action,
            Action::Mark {
                value: 0x4000,
                mask: 0x4000
            }
        );
        let r = rule("-m mark ! --mark 0x4000/0x4000 -j RETURN");
        assert!(r.matches[0].negated);
        let r = rule("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-X");
        assert!(
            matches!(r.matches[0].cond, Cond::Probability { p } if (p - 0.3333333333).abs() < 1e-9)
        );
        let r = rule("-p tcp -m multiport --dports 80,443,8000:8080 -g CNI-DN-1");
        assert_eq!(
            r.action,
            Action::Goto {
                chain: "CNI-DN-1".into()
            }
        );
        match &r.matches[1].cond {
            Cond::Port { ports, .. } => assert_eq!(ports.len(), 3),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn unknown_match_kept() {
        let r = rule("-m physdev --physdev-is-bridged -m limit --limit 5/min -j ACCEPT");
        assert_eq!(r.matches.len(), 2);
        assert!(matches!(&r.matches[0].cond, Cond::Unknown { text } if text.contains("physdev")));
    }

    #[test]
    fn unquoted_comment() {
        let r = rule("-m comment --comment kubernetes service portals -j KUBE-SERVICES");
        assert_eq!(r.comment.as_deref(), Some("kubernetes service portals"));
        assert_eq!(
            r.action,
            Action::Jump {
                chain: "KUBE-SERVICES".into()
            }
        );
    }

    #[test]
    fn save_with_counters_and_errors() {
        let text = "*nat\n:PREROUTING ACCEPT [12:720]\n:DOCKER - [0:0]\n[3:180] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER -p tcp --dport notaport -j DNAT --to-destination 1.2.3.4:80\n-A DOCKER -j RETURN\nCOMMIT\n";
        let rs = parse(text);
        assert_eq!(rs.problems.len(), 1);
        assert_eq!(rs.problems[0].line, 5);
        let t = &rs.tables[0];
        let pre = t.chain("PREROUTING").unwrap();
        assert_eq!(pre.policy.as_ref().unwrap().counters, Some([12, 720]));
        assert_eq!(pre.rules[0].counters, Some([3, 180]));
        assert_eq!(t.chain("DOCKER").unwrap().rules.len(), 1);
    }

    #[test]
    fn dash_s_listing() {
        let text = "-P PREROUTING ACCEPT\n-N DOCKER\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n";
        let rs = parse(text);
        assert!(rs.problems.is_empty(), "{:?}", rs.problems);
        assert_eq!(rs.tables[0].name, "nat");
        assert_eq!(rs.rule_count(), 2);
    }

    #[test]
    fn nat_to_forms() {
        let t = parse_nat_to("[fd00::2]:8080").unwrap();
        assert_eq!(t.addr, Some("fd00::2".parse().unwrap()));
        let t = parse_nat_to("10.0.0.1-10.0.0.5:1000-2000").unwrap();
        assert_eq!(t.addr_to, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            t.ports,
            Some(PortRange {
                from: 1000,
                to: 2000
            })
        );
        let t = parse_nat_to(":53").unwrap();
        assert_eq!(t.addr, None);
        assert!(parse_nat_to("x:y").is_err());
    }
}
