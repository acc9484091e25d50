//! `nft list ruleset` text: tokens, tables, chains, sets, maps and rules.

use std::collections::HashMap;

use super::super::iptables::{parse_nat_to, parse_net, parse_port_range};
use super::super::model::*;
use super::{chain_type, priority_value, RuleBuilder};

#[derive(Debug, Clone, PartialEq)]
struct Tok {
    s: String,
    line: usize,
    quoted: bool,
}

fn tokenize_text(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let line = no + 1;
        let mut cur = String::new();
        let mut chars = raw.chars().peekable();
        let flush = |cur: &mut String, out: &mut Vec<Tok>| {
            if !cur.is_empty() {
                out.push(Tok {
                    s: std::mem::take(cur),
                    line,
                    quoted: false,
                });
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' if cur.is_empty() => break,
                '"' => {
                    flush(&mut cur, &mut out);
                    let mut s = String::new();
                    for x in chars.by_ref() {
                        if x == '"' {
                            break;
                        }
                        s.push(x);
                    }
                    out.push(Tok {
                        s,
                        line,
                        quoted: true,
                    });
                }
                '{' | '}' | ';' | ',' => {
                    flush(&mut cur, &mut out);
                    out.push(Tok {
                        s: c.to_string(),
                        line,
                        quoted: false,
                    });
                }
                c if c.is_whitespace() => flush(&mut cur, &mut out),
                c => cur.push(c),
            }
        }
        flush(&mut cur, &mut out);
        out.push(Tok {
            s: "\n".into(),
            line,
            quoted: false,
        });
    }
    out
}

struct TextParser {
    toks: Vec<Tok>,
    pos: usize,
    rs: Ruleset,
}

impl TextParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn skip_newlines(&mut self) {
        while self.peek().is_some_and(|t| t.s == "\n" || t.s == ";") {
            self.pos += 1;
        }
    }
    /// Tokens of one statement: up to a newline or ';' at brace depth 0 (a '}' at depth 0 ends it too).
    fn statement(&mut self) -> Vec<Tok> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        while let Some(t) = self.peek() {
            if depth == 0 && (t.s == "\n" || t.s == ";" || (t.s == "}" && !t.quoted)) {
                break;
            }
            let t = self.next().unwrap_or_else(|| Tok {
                s: String::new(),
                line: 0,
                quoted: false,
            });
            if !t.quoted {
                if t.s == "{" {
                    depth += 1;
                } else if t.s == "}" {
                    depth -= 1;
                }
            }
            if t.s != "\n" {
                out.push(t);
            }
        }
        out
    }
    /// A block header: tokens up to and including `{`, or up to a newline or ';'.
    fn header(&mut self) -> Vec<Tok> {
        let mut out = Vec::new();
        while let Some(t) = self.peek() {
            if !t.quoted && (t.s == "\n" || t.s == ";") {
                break;
            }
            let t = t.clone();
            self.pos += 1;
            let open = !t.quoted && t.s == "{";
            out.push(t);
            if open {
                break;
            }
        }
        out
    }
    /// Skip a `{ ... }` block (the opening brace already consumed).
    fn skip_block(&mut self) {
        let mut depth = 1;
        while let Some(t) = self.next() {
            if t.quoted {
                continue;
            }
            if t.s == "{" {
                depth += 1;
            } else if t.s == "}" {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }
}

/// Parse `nft list ruleset` text. Rules become model rules with their real line numbers.
pub fn parse_text(text: &str) -> Ruleset {
    let mut p = TextParser {
        toks: tokenize_text(text),
        pos: 0,
        rs: Ruleset::default(),
    };
    loop {
        p.skip_newlines();
        let Some(t) = p.next() else { break };
        if t.s == "table" {
            let st = p.header();
            // table [family] name {
            let words: Vec<&str> = st
                .iter()
                .map(|t| t.s.as_str())
                .filter(|s| *s != "{")
                .collect();
            let (family, name) = match words.as_slice() {
                [f, n, ..] => (f.to_string(), n.to_string()),
                [n] => ("ip".to_string(), n.to_string()),
                _ => {
                    p.rs.problems.push(Problem {
                        line: t.line,
                        message: "'table' without a name".into(),
                    });
                    continue;
                }
            };
            if st.last().map(|t| t.s.as_str()) != Some("{") {
                continue; // "table ip x" without a body (e.g. from `flush table`)
            }
            table_body(&mut p, &family, &name);
        } else if t.s == "flush" || t.s == "delete" || t.s == "add" || t.s == "destroy" {
            let st = p.header();
            if st.last().is_some_and(|x| x.s == "{") {
                p.skip_block();
            }
        } else {
            p.rs.problems.push(Problem {
                line: t.line,
                message: format!(
                    "unexpected '{}' at top level: expected 'table FAMILY NAME {{'",
                    t.s
                ),
            });
            let st = p.header();
            if st.last().is_some_and(|x| x.s == "{") {
                p.skip_block();
            }
        }
    }
    for t in &mut p.rs.tables {
        t.reindex();
    }
    p.rs
}

fn table_body(p: &mut TextParser, family: &str, name: &str) {
    let mut table = Table::new(name, family, Backend::Nftables);
    let mut maps: HashMap<String, Vec<(String, Action)>> = HashMap::new();
    let mut sets: HashMap<String, Vec<String>> = HashMap::new();
    // (chain index, rule tokens) resolved after maps are known
    let mut pending: Vec<(usize, Vec<Tok>)> = Vec::new();
    loop {
        p.skip_newlines();
        let Some(t) = p.next() else { break };
        match t.s.as_str() {
            "}" => break,
            "chain" => {
                let st = p.header();
                let Some(cname) = st.first().map(|x| x.s.clone()) else {
                    continue;
                };
                let ci = table.chain_index_or_add(&cname, t.line);
                table.chains[ci].line = t.line;
                if st.last().map(|x| x.s.as_str()) != Some("{") {
                    continue;
                }
                loop {
                    p.skip_newlines();
                    match p.peek() {
                        None => break,
                        Some(x) if x.s == "}" && !x.quoted => {
                            p.pos += 1;
                            break;
                        }
                        _ => {}
                    }
                    let st = p.statement();
                    if st.is_empty() {
                        p.pos += 1;
                        continue;
                    }
                    match st[0].s.as_str() {
                        "type" => {
                            // type nat hook prerouting priority dstnat; policy accept;
                            let w: Vec<&str> = st.iter().map(|x| x.s.as_str()).collect();
                            let kind = w.get(1).copied().unwrap_or("filter");
                            let hook = w
                                .iter()
                                .position(|x| *x == "hook")
                                .and_then(|i| w.get(i + 1))
                                .and_then(|h| Hook::from_name(h));
                            let prio = w
                                .iter()
                                .position(|x| *x == "priority")
                                .map(|i| w[i + 1..].join(" "))
                                .and_then(|s| priority_value(&s))
                                .unwrap_or(0);
                            if let Some(hook) = hook {
                                let c = &mut table.chains[ci];
                                c.base = Some(BaseChain {
                                    hook,
                                    kind: chain_type(kind),
                                    priority: prio,
                                });
                                if c.policy.is_none() {
                                    c.policy = Some(Policy {
                                        verdict: "ACCEPT".into(),
                                        counters: None,
                                    });
                                }
                            }
                        }
                        "policy" => {
                            if let Some(v) = st.get(1) {
                                table.chains[ci].policy = Some(Policy {
                                    verdict: v.s.to_ascii_uppercase(),
                                    counters: None,
                                });
                            }
                        }
                        "comment" if st.len() == 2 => {}
                        _ => pending.push((ci, st)),
                    }
                }
            }
            "map" | "set" | "flowtable" | "counter" | "quota" | "ct" | "limit" | "secmark"
            | "synproxy" => {
                let st = p.header();
                let mname = st.first().map(|x| x.s.clone()).unwrap_or_default();
                if st.last().map(|x| x.s.as_str()) != Some("{") {
                    continue;
                }
                if t.s != "map" && t.s != "set" {
                    p.skip_block();
                    continue;
                }
                // map or set body: collect all tokens to the closing brace.
                let mut depth = 1;
                let mut body = Vec::new();
                while let Some(x) = p.next() {
                    if !x.quoted && x.s == "{" {
                        depth += 1;
                    } else if !x.quoted && x.s == "}" {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    body.push(x);
                }
                if t.s == "set" {
                    sets.insert(mname, set_elements_text(&body));
                } else {
                    maps.insert(mname, map_elements(&body));
                }
            }
            "flags" | "comment" => {
                p.statement();
            }
            other => {
                p.rs.problems.push(Problem {
                    line: t.line,
                    message: format!("unexpected '{other}' in table {name}"),
                });
                let st = p.header();
                if st.last().is_some_and(|x| x.s == "{") {
                    p.skip_block();
                }
            }
        }
    }
    for (ci, st) in pending {
        let line = st.first().map(|t| t.line).unwrap_or(0);
        let rule = text_rule(&st, (&maps, &sets), line);
        table.chains[ci].rules.push(rule);
    }
    table.reindex();
    p.rs.tables.push(table);
}

/// `elements = { "a" : jump x, "b" : accept }` inside a map body.
fn map_elements(body: &[Tok]) -> Vec<(String, Action)> {
    let Some(start) = body.iter().position(|t| t.s == "elements") else {
        return Vec::new();
    };
    let items: Vec<&Tok> = body[start + 1..]
        .iter()
        .filter(|t| t.s != "=" && t.s != "{" && t.s != "}" && t.s != "\n")
        .collect();
    let mut out = Vec::new();
    for group in items.split(|t| t.s == ",") {
        let words: Vec<&str> = group.iter().map(|t| t.s.as_str()).collect();
        if let Some(colon) = words.iter().position(|w| *w == ":") {
            // An element's comment (kube-proxy names the service there) is not part of its key.
            let key_end = words[..colon]
                .iter()
                .position(|w| *w == "comment")
                .unwrap_or(colon);
            let key = words[..key_end].join(" ");
            if let Some(v) = verdict_words(&words[colon + 1..]) {
                out.push((key, v));
            }
        }
    }
    out
}

/// `elements = { a, b . c, 10.0.0.0/8 comment "x" }` inside a set body (or a `{ ... }` after a
/// rule's operator): each element as "a", "b . c"; comments, timeouts and counters left out.
fn set_elements_text(body: &[Tok]) -> Vec<String> {
    let Some(start) = body.iter().position(|t| t.s == "elements" && !t.quoted) else {
        return Vec::new();
    };
    element_groups(&body[start + 1..])
}

/// Comma-separated elements of a `{ ... }` list (braces, '=' and newlines ignored).
fn element_groups(toks: &[Tok]) -> Vec<String> {
    let items: Vec<&Tok> = toks
        .iter()
        .filter(|t| t.quoted || (t.s != "=" && t.s != "{" && t.s != "}" && t.s != "\n"))
        .collect();
    let mut out = Vec::new();
    for group in items.split(|t| !t.quoted && t.s == ",") {
        let words: Vec<&str> = group
            .iter()
            .take_while(|t| {
                t.quoted
                    || !matches!(
                        t.s.as_str(),
                        "comment" | "timeout" | "expires" | "counter" | "packets" | "bytes"
                    )
            })
            .map(|t| t.s.as_str())
            .collect();
        if !words.is_empty() {
            out.push(words.join(" "));
        }
    }
    out
}

fn verdict_words(w: &[&str]) -> Option<Action> {
    Some(match w {
        ["accept", ..] => Action::Accept,
        ["drop", ..] => Action::Drop,
        ["return", ..] => Action::Return,
        ["continue", ..] => Action::None,
        ["jump", c, ..] => Action::Jump {
            chain: c.to_string(),
        },
        ["goto", c, ..] => Action::Goto {
            chain: c.to_string(),
        },
        _ => return None,
    })
}

const STATEMENT_WORDS: &[&str] = &[
    "iifname",
    "oifname",
    "iif",
    "oif",
    "ip",
    "ip6",
    "tcp",
    "udp",
    "sctp",
    "th",
    "meta",
    "ct",
    "fib",
    "counter",
    "comment",
    "accept",
    "drop",
    "return",
    "jump",
    "goto",
    "continue",
    "reject",
    "masquerade",
    "dnat",
    "snat",
    "redirect",
    "log",
    "mark",
    "numgen",
    "vmap",
    "setconcat",
    "notrack",
    "limit",
];

/// Values after an operator: one word, or `{ a, b }` as a list.
fn take_values(w: &[&str], i: &mut usize) -> Vec<String> {
    let mut out = Vec::new();
    if w.get(*i) == Some(&"{") {
        *i += 1;
        while let Some(x) = w.get(*i) {
            *i += 1;
            if *x == "}" {
                break;
            }
            if *x != "," {
                out.push(x.to_string());
            }
        }
    } else if let Some(x) = w.get(*i) {
        out.push(x.to_string());
        *i += 1;
    }
    out
}

fn take_op(w: &[&str], i: &mut usize) -> Option<bool> {
    match w.get(*i) {
        Some(&"!=") => {
            *i += 1;
            Some(true)
        }
        Some(&"==") | Some(&"eq") => {
            *i += 1;
            Some(false)
        }
        Some(&"<") | Some(&">") | Some(&"<=") | Some(&">=") | Some(&"lt") | Some(&"gt") => None,
        _ => Some(false),
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    if let Some(h) = s.strip_prefix("0x") {
        u32::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// One rule from its tokens.
/// A concatenated verdict-map key ending just before `vmap` at `v`: (start index, fields).
fn concat_before(w: &[&str], v: usize) -> Option<(usize, Vec<KeyField>)> {
    let mut end = v;
    let mut fields = Vec::new();
    loop {
        let two = end >= 2 && KeyField::from_words(&w[end - 2..end]).is_some();
        let (start, f) = if two {
            (end - 2, KeyField::from_words(&w[end - 2..end])?)
        } else if end >= 1 {
            (end - 1, KeyField::from_words(&w[end - 1..end])?)
        } else {
            return None;
        };
        fields.push(f);
        if start >= 1 && w[start - 1] == "." {
            end = start - 1;
        } else {
            fields.reverse();
            return (fields.len() > 1).then_some((start, fields));
        }
    }
}

/// A named set's lookup condition in the text parser (None elements: not in this dump).
fn named_set(sets: &HashMap<String, Vec<String>>, name: &str, fields: Vec<KeyField>) -> Cond {
    nft_set(name, fields, sets.get(name).cloned())
}

/// Where a concatenated set lookup's key (`ip daddr . th dport @s`, `... != { ... }`) starts,
/// with its fields and the index of its operator or set.
fn set_concat(w: &[&str]) -> Option<(usize, Vec<KeyField>, usize)> {
    (1..w.len()).find_map(|i| {
        if !(w[i].starts_with('@') || w[i] == "{") || w[i - 1] == "vmap" {
            return None;
        }
        let key_end = if matches!(w[i - 1], "!=" | "==") {
            i - 1
        } else {
            i
        };
        let (start, fields) = concat_before(w, key_end)?;
        Some((start, fields, key_end))
    })
}

#[allow(clippy::type_complexity)]
fn text_rule(
    st: &[Tok],
    named: (
        &HashMap<String, Vec<(String, Action)>>,
        &HashMap<String, Vec<String>>,
    ),
    line: usize,
) -> Rule {
    let (maps, sets) = named;
    // kube-proxy's `ip daddr . meta l4proto . th dport vmap @service-ips`: take the key out.
    let mut concat_fields: Vec<KeyField> = Vec::new();
    let owned: Vec<Tok>;
    let st = match st.iter().position(|t| t.s == "vmap") {
        Some(v) => {
            let words: Vec<&str> = st.iter().map(|t| t.s.as_str()).collect();
            match concat_before(&words, v) {
                Some((start, fields)) => {
                    concat_fields = fields;
                    owned = st[..start]
                        .iter()
                        .cloned()
                        .chain(std::iter::once(Tok {
                            s: "concat".into(),
                            line: st[start].line,
                            quoted: false,
                        }))
                        .chain(st[v..].iter().cloned())
                        .collect();
                    &owned[..]
                }
                None => st,
            }
        }
        None => st,
    };
    // A concatenated set lookup: take its key out the same way.
    let mut set_fields: Vec<KeyField> = Vec::new();
    let owned2: Vec<Tok>;
    let st = {
        let words: Vec<&str> = st.iter().map(|t| t.s.as_str()).collect();
        match set_concat(&words) {
            Some((start, fields, key_end)) => {
                set_fields = fields;
                owned2 = st[..start]
                    .iter()
                    .cloned()
                    .chain(std::iter::once(Tok {
                        s: "setconcat".into(),
                        line: st[start].line,
                        quoted: false,
                    }))
                    .chain(st[key_end..].iter().cloned())
                    .collect();
                &owned2[..]
            }
            None => st,
        }
    };
    let w: Vec<&str> = st.iter().map(|t| t.s.as_str()).collect();
    let text = st
        .iter()
        .map(|t| {
            if t.quoted {
                format!("\"{}\"", t.s)
            } else {
                t.s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut b = RuleBuilder::default();
    let mut comment = None;
    let mut i = 0;
    let mut last_key: Option<VmapKey> = None;
    while i < w.len() {
        // `meta iifname x` is the long form of `iifname x`
        if w[i] == "meta"
            && matches!(
                w.get(i + 1),
                Some(&"iifname") | Some(&"oifname") | Some(&"iif") | Some(&"oif")
            )
        {
            i += 1;
        }
        let start = i;
        let word = w[i];
        i += 1;
        let ok: bool = (|| -> Option<()> {
            match word {
                "iifname" | "oifname" | "iif" | "oif" => {
                    let key = if word.starts_with('i') {
                        VmapKey::InIface
                    } else {
                        VmapKey::OutIface
                    };
                    if w.get(i) == Some(&"vmap") {
                        last_key = Some(key);
                        return Some(());
                    }
                    let neg = take_op(&w, &mut i)?;
                    let vals = take_values(&w, &mut i);
                    if vals.len() != 1 {
                        return None;
                    }
                    let name = vals[0].clone();
                    b.push(
                        neg,
                        if key == VmapKey::InIface {
                            Cond::InIface { name }
                        } else {
                            Cond::OutIface { name }
                        },
                    );
                }
                "ip" | "ip6" => {
                    let field = *w.get(i)?;
                    i += 1;
                    let neg = take_op(&w, &mut i)?;
                    if matches!(field, "saddr" | "daddr") {
                        let f = if field == "saddr" {
                            KeyField::SrcAddr
                        } else {
                            KeyField::DstAddr
                        };
                        if let Some(name) = w.get(i).and_then(|x| x.strip_prefix('@')) {
                            i += 1;
                            b.push(neg, named_set(sets, name, vec![f]));
                            return Some(());
                        }
                        if w.get(i) == Some(&"{") {
                            let j = i;
                            let vals = take_values(&w, &mut i);
                            if vals.len() > 1 {
                                let texts = element_groups(&st[j..i]);
                                b.push(neg, nft_set("", vec![f], Some(texts)));
                                return Some(());
                            }
                            i = j;
                        }
                    }
                    let vals = take_values(&w, &mut i);
                    match field {
                        "saddr" | "daddr" if vals.len() == 1 => {
                            let dir = if field == "saddr" { Dir::Src } else { Dir::Dst };
                            if let Some((a, z)) =
                                vals[0].split_once('-').filter(|_| !vals[0].contains('/'))
                            {
                                b.push(
                                    neg,
                                    Cond::AddrRange {
                                        dir,
                                        from: a.parse().ok()?,
                                        to: z.parse().ok()?,
                                    },
                                );
                            } else {
                                b.push(
                                    neg,
                                    Cond::Addr {
                                        dir,
                                        net: parse_net(&vals[0]).ok()?,
                                    },
                                );
                            }
                        }
                        "protocol" | "nexthdr" if vals.len() == 1 => b.push(
                            neg,
                            Cond::Proto {
                                proto: vals[0].clone(),
                            },
                        ),
                        _ => return None,
                    }
                }
                "tcp" | "udp" | "sctp" | "th" => {
                    let field = *w.get(i)?;
                    i += 1;
                    if field != "dport" && field != "sport" {
                        return None;
                    }
                    let neg = take_op(&w, &mut i)?;
                    if let Some(name) = w.get(i).and_then(|x| x.strip_prefix('@')) {
                        i += 1;
                        if word != "th" {
                            b.push(false, Cond::Proto { proto: word.into() });
                        }
                        let f = if field == "sport" {
                            KeyField::SrcPort
                        } else {
                            KeyField::DstPort
                        };
                        b.push(neg, named_set(sets, name, vec![f]));
                        return Some(());
                    }
                    let vals = take_values(&w, &mut i);
                    let ports = vals
                        .iter()
                        .map(|v| parse_port_range(v).ok())
                        .collect::<Option<Vec<_>>>()?;
                    if ports.is_empty() {
                        return None;
                    }
                    if word != "th" {
                        b.push(false, Cond::Proto { proto: word.into() });
                    }
                    b.push(
                        neg,
                        Cond::Port {
                            dir: if field == "sport" { Dir::Src } else { Dir::Dst },
                            ports,
                        },
                    );
                }
                "meta" | "mark" => {
                    let key = if word == "mark" {
                        "mark"
                    } else {
                        let k = *w.get(i)?;
                        i += 1;
                        k
                    };
                    match key {
                        "l4proto" | "protocol" => {
                            let neg = take_op(&w, &mut i)?;
                            let vals = take_values(&w, &mut i);
                            if vals.len() != 1 {
                                return None;
                            }
                            b.push(
                                neg,
                                Cond::Proto {
                                    proto: vals[0].clone(),
                                },
                            );
                        }
                        "mark" => {
                            if w.get(i) == Some(&"set") {
                                i += 1;
                                // mark set V | mark set mark or V | and | xor
                                // (`meta mark set meta mark | V` is the long form)
                                let long = w.get(i) == Some(&"meta");
                                if long {
                                    i += 1;
                                }
                                let rest: Vec<&str> = w[i..].iter().take(4).copied().collect();
                                let (value, mask, used) = match rest.as_slice() {
                                    ["mark", "or", v, ..] | ["mark", "|", v, ..] => {
                                        let v = parse_u32(v)?;
                                        (v, v, 3)
                                    }
                                    ["mark", "xor", v, ..] | ["mark", "^", v, ..] => {
                                        (parse_u32(v)?, 0, 3)
                                    }
                                    ["mark", "and", v, ..] | ["mark", "&", v, ..] => {
                                        (0, !parse_u32(v)?, 3)
                                    }
                                    [v, ..] => (parse_u32(v)?, u32::MAX, 1),
                                    _ => return None,
                                };
                                i += used;
                                b.other = Some(Action::Mark { value, mask });
                            } else if w.get(i) == Some(&"&") {
                                let mask = parse_u32(w.get(i + 1)?)?;
                                i += 2;
                                let neg = take_op(&w, &mut i)?;
                                let value = parse_u32(w.get(i)?)?;
                                i += 1;
                                b.push(neg, Cond::Mark { value, mask });
                            } else {
                                let neg = take_op(&w, &mut i)?;
                                let value = parse_u32(w.get(i)?)?;
                                i += 1;
                                b.push(
                                    neg,
                                    Cond::Mark {
                                        value,
                                        mask: u32::MAX,
                                    },
                                );
                            }
                        }
                        _ => return None,
                    }
                }
                "ct" => {
                    let key = *w.get(i)?;
                    i += 1;
                    if key != "state" && key != "status" {
                        return None;
                    }
                    let neg = take_op(&w, &mut i)?;
                    let vals = if w.get(i) == Some(&"{") {
                        take_values(&w, &mut i)
                    } else {
                        // "established,related" arrives as words separated by ',' tokens
                        let mut v = vec![w.get(i)?.to_string()];
                        i += 1;
                        while w.get(i) == Some(&",") {
                            v.push(w.get(i + 1)?.to_string());
                            i += 2;
                        }
                        v
                    };
                    b.push(
                        neg,
                        Cond::CtState {
                            states: vals.iter().map(|s| s.to_ascii_uppercase()).collect(),
                        },
                    );
                }
                "fib" => {
                    // fib daddr [. iif] type [!=] local
                    let mut dir = Dir::Dst;
                    while let Some(x) = w.get(i) {
                        i += 1;
                        match *x {
                            "saddr" => dir = Dir::Src,
                            "daddr" => dir = Dir::Dst,
                            "type" => break,
                            "." | "iif" | "oif" | "mark" => {}
                            _ => return None,
                        }
                    }
                    let neg = take_op(&w, &mut i)?;
                    let vals = take_values(&w, &mut i);
                    b.push(
                        neg,
                        Cond::AddrType {
                            dir,
                            types: vals.iter().map(|s| s.to_ascii_uppercase()).collect(),
                        },
                    );
                }
                "counter" => {
                    // counter [packets N bytes M]
                    if w.get(i) == Some(&"packets") {
                        i += 4;
                    }
                }
                "comment" => {
                    comment = st.get(i).map(|t| t.s.clone());
                    i += 1;
                }
                "accept" | "drop" | "return" | "continue" => b.terminal = verdict_words(&[word]),
                "jump" | "goto" => {
                    let c = *w.get(i)?;
                    i += 1;
                    b.terminal = verdict_words(&[word, c]);
                }
                "reject" => {
                    let mut with = Vec::new();
                    while let Some(x) = w.get(i) {
                        if STATEMENT_WORDS.contains(x) {
                            break;
                        }
                        with.push(*x);
                        i += 1;
                    }
                    b.terminal = Some(Action::Reject {
                        with: (!with.is_empty()).then(|| with.join(" ")),
                    });
                }
                "masquerade" | "redirect" => {
                    let mut ports = None;
                    if w.get(i) == Some(&"to") {
                        let v = w.get(i + 1)?.trim_start_matches(':');
                        ports = Some(parse_port_range(v).ok()?);
                        i += 2;
                    }
                    while w
                        .get(i)
                        .is_some_and(|x| matches!(*x, "random" | "persistent" | "fully-random"))
                    {
                        i += 1;
                    }
                    b.nat = Some(if word == "masquerade" {
                        Action::Masquerade { ports }
                    } else {
                        Action::Redirect { ports }
                    });
                }
                "dnat" | "snat" => {
                    if matches!(w.get(i), Some(&"ip") | Some(&"ip6")) {
                        i += 1;
                    }
                    if w.get(i) != Some(&"to") {
                        return None;
                    }
                    let to = parse_nat_to(w.get(i + 1)?).ok()?;
                    i += 2;
                    b.nat = Some(if word == "dnat" {
                        Action::Dnat { to }
                    } else {
                        Action::Snat { to }
                    });
                }
                "log" => {
                    let mut prefix = None;
                    while let Some(x) = w.get(i) {
                        match *x {
                            "prefix" => {
                                prefix = st.get(i + 1).map(|t| t.s.clone());
                                i += 2;
                            }
                            "level" | "group" | "flags" | "snaplen" | "queue-threshold" => i += 2,
                            _ => break,
                        }
                    }
                    if b.other.is_none() {
                        b.other = Some(Action::Log { prefix });
                    }
                }
                "concat" => {
                    last_key = Some(VmapKey::Concat);
                }
                "setconcat" => {
                    let neg = take_op(&w, &mut i)?;
                    let cond = if let Some(name) = w.get(i)?.strip_prefix('@') {
                        i += 1;
                        named_set(sets, name, set_fields.clone())
                    } else {
                        let j = i;
                        take_values(&w, &mut i);
                        nft_set("", set_fields.clone(), Some(element_groups(&st[j..i])))
                    };
                    b.push(neg, cond);
                }
                "numgen" => {
                    // numgen random mod N vmap { 0 : jump a, ... }
                    if w.get(i) != Some(&"random") {
                        return None;
                    }
                    while w.get(i).is_some_and(|x| *x != "vmap") {
                        i += 1;
                    }
                    last_key = Some(VmapKey::Random);
                }
                "vmap" => {
                    let key = last_key.take().unwrap_or(VmapKey::Other);
                    let entries = if let Some(name) = w.get(i)?.strip_prefix('@') {
                        i += 1;
                        maps.get(name).cloned().unwrap_or_default()
                    } else if w.get(i) == Some(&"{") {
                        let startb = i;
                        let mut depth = 0;
                        while let Some(x) = w.get(i) {
                            i += 1;
                            if *x == "{" {
                                depth += 1;
                            } else if *x == "}" {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                        }
                        let toks: Vec<Tok> = st[startb..i].to_vec();
                        let mut with_kw = vec![Tok {
                            s: "elements".into(),
                            line: 0,
                            quoted: false,
                        }];
                        with_kw.extend(toks);
                        map_elements(&with_kw)
                    } else {
                        return None;
                    };
                    let fields = if key == VmapKey::Concat {
                        concat_fields.clone()
                    } else {
                        Vec::new()
                    };
                    b.terminal = Some(Action::Vmap {
                        key,
                        entries,
                        fields,
                    });
                }
                _ => return None,
            }
            Some(())
        })()
        .is_some();
        if !ok {
            // Unknown: keep the words up to the next statement keyword as one unknown match.
            let mut j = start + 1;
            while j < w.len() && !STATEMENT_WORDS.contains(&w[j]) {
                j += 1;
            }
            b.push(
                false,
                Cond::Unknown {
                    text: w[start..j].join(" "),
                },
            );
            i = j;
        }
    }
    b.finish(line, text, comment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"table ip docker-bridges {
	map filter-forward-in-jumps {
		type ifname : verdict
		elements = { "docker0" : jump filter-forward-in__docker0,
			     "bridge1" : jump filter-forward-in__bridge1 }
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-prerouting-and-output {
		iifname != "bridge1" tcp dport 8080 counter dnat to 192.0.2.2:80 comment "DNAT"
		meta mark & 0x00002000 == 0x00002000 frobnicate 3 counter accept
	}
	chain filter-FORWARD {
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
	}
	chain filter-forward-in__docker0 {
		ct state established,related counter accept
		counter drop comment "UNPUBLISHED PORT DROP"
	}
}
"#;

    #[test]
    fn text_loads() {
        let rs = parse_text(TEXT);
        assert!(rs.problems.is_empty(), "{:?}", rs.problems);
        let t = &rs.tables[0];
        assert_eq!(t.name, "docker-bridges");
        let pre = t.chain("nat-PREROUTING").unwrap();
        assert_eq!(pre.base.unwrap().priority, -100);
        assert_eq!(pre.rules[0].line, 9);
        let r = &t.chain("nat-prerouting-and-output").unwrap().rules;
        assert!(matches!(r[0].action, Action::Dnat { .. }));
        assert_eq!(r[0].comment.as_deref(), Some("DNAT"));
        assert!(r[0].matches[0].negated);
        assert_eq!(
            r[1].matches[0].cond,
            Cond::Mark {
                value: 0x2000,
                mask: 0x2000
            }
        );
        assert!(matches!(&r[1].matches[1].cond, Cond::Unknown { text } if text == "frobnicate 3"));
        assert_eq!(r[1].action, Action::Accept);
        match &t.chain("filter-FORWARD").unwrap().rules[0].action {
            Action::Vmap { entries, .. } => assert_eq!(entries.len(), 2),
            a => panic!("{a:?}"),
        }
        assert_eq!(priority_value("dstnat - 5"), Some(-105));
    }
}
