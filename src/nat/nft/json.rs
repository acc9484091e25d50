//! `nft -j list ruleset` through serde_json::Value, so one unknown expression degrades one rule
//! and never the ruleset.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;

use super::super::iptables::{parse_nat_to, parse_net, parse_port_range};
use super::super::model::*;
use super::super::NatError;
use super::{chain_type, priority_value, RuleBuilder};

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(117).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// Verdict maps by (family, table, name).
type VerdictMaps = HashMap<(String, String, String), Vec<(String, Action)>>;

/// Named sets' elements as text ("a . b" for a concatenation) by (family, table, name).
type NamedSets = HashMap<(String, String, String), Vec<String>>;

struct JsonLoader {
    rs: Ruleset,
    tables: HashMap<(String, String), usize>,
    /// (family, table, map name) -> entries
    maps: VerdictMaps,
    /// (family, table, set name) -> elements
    sets: NamedSets,
    /// "family table" -> xt expression name -> how many.
    xt: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
}

/// Parse `nft -j list ruleset` output.
pub fn parse(json: &str) -> Result<Ruleset, NatError> {
    let v: Value = serde_json::from_str(json).map_err(|e| {
        NatError::BadJson(format!(
            "not nft JSON: {e} (expected the output of `nft -j list ruleset`)"
        ))
    })?;
    let items = v.get("nftables").and_then(Value::as_array).ok_or_else(|| {
        NatError::BadJson(
            "no \"nftables\" array at the top (expected the output of `nft -j list ruleset`)"
                .into(),
        )
    })?;
    let mut l = JsonLoader {
        rs: Ruleset::default(),
        tables: HashMap::new(),
        maps: HashMap::new(),
        sets: HashMap::new(),
        xt: Default::default(),
    };
    // Maps and sets first: rules refer to them by name.
    for (i, item) in items.iter().enumerate() {
        if let Some(m) = item.get("map") {
            l.map(i, m);
        }
        if let Some(st) = item.get("set") {
            // A set without "elem" is empty (nft omits the key).
            let texts = st
                .get("elem")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|e| elem_text(e).unwrap_or_else(|| "?".into()))
                        .collect()
                })
                .unwrap_or_default();
            l.sets.insert(
                (
                    str_of(st, "family").into(),
                    str_of(st, "table").into(),
                    str_of(st, "name").into(),
                ),
                texts,
            );
        }
    }
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            l.problem(i, format!("item {i} is not an object"));
            continue;
        };
        for (k, body) in obj {
            match k.as_str() {
                "table" => {
                    l.table_idx(str_of(body, "family"), str_of(body, "name"));
                }
                "chain" => l.chain(i, body),
                "rule" => l.rule(i, body),
                _ => {}
            }
        }
    }
    for t in &mut l.rs.tables {
        t.reindex();
    }
    for (table, names) in &l.xt {
        let list: Vec<String> = names.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        l.rs.warnings.push(format!(
            "table {table} was written by iptables-nft: {} compat (xt) expression(s) ({}) carry only their name in nft's JSON, so DNAT/SNAT addresses and the match arguments could not be read; those matches are treated as unknown. Read this host with `iptables-nft-save` (or run explain-nat live) for the full rules",
            names.values().sum::<usize>(),
            list.join(", ")
        ));
    }
    Ok(l.rs)
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

impl JsonLoader {
    fn problem(&mut self, i: usize, message: String) {
        self.rs.problems.push(Problem {
            line: 0,
            message: format!("nft JSON item {i}: {message}"),
        });
    }

    fn table_idx(&mut self, family: &str, name: &str) -> usize {
        let key = (family.to_string(), name.to_string());
        if let Some(&i) = self.tables.get(&key) {
            return i;
        }
        self.rs
            .tables
            .push(Table::new(name, family, Backend::Nftables));
        let i = self.rs.tables.len() - 1;
        self.tables.insert(key, i);
        i
    }

    fn map(&mut self, i: usize, m: &Value) {
        if str_of(m, "map") != "verdict" {
            return;
        }
        let mut entries = Vec::new();
        for e in m
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pair = e.as_array();
            match pair.map(|p| p.as_slice()) {
                Some([k, verdict]) => {
                    let key = key_text(k);
                    entries.push((
                        key,
                        verdict_of(verdict).unwrap_or(Action::Other {
                            text: compact(verdict),
                            terminal: false,
                        }),
                    ));
                }
                _ => self.problem(i, format!("map element {} not understood", compact(e))),
            }
        }
        self.maps.insert(
            (
                str_of(m, "family").into(),
                str_of(m, "table").into(),
                str_of(m, "name").into(),
            ),
            entries,
        );
    }

    fn chain(&mut self, _i: usize, c: &Value) {
        let ti = self.table_idx(str_of(c, "family"), str_of(c, "table"));
        let t = &mut self.rs.tables[ti];
        let ci = t.chain_index_or_add(str_of(c, "name"), 0);
        let ch = &mut t.chains[ci];
        if let Some(hook) = c
            .get("hook")
            .and_then(Value::as_str)
            .and_then(Hook::from_name)
        {
            let prio = match c.get("prio") {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
                Some(Value::String(s)) => priority_value(s).unwrap_or(0),
                _ => 0,
            };
            ch.base = Some(BaseChain {
                hook,
                kind: chain_type(str_of(c, "type")),
                priority: prio,
            });
            ch.policy = Some(Policy {
                verdict: c
                    .get("policy")
                    .and_then(Value::as_str)
                    .unwrap_or("accept")
                    .to_ascii_uppercase(),
                counters: None,
            });
        }
    }

    fn rule(&mut self, i: usize, r: &Value) {
        let family = str_of(r, "family").to_string();
        let tname = str_of(r, "table").to_string();
        let ti = self.table_idx(&family, &tname);
        let exprs = r
            .get("expr")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0) as usize;
        let mut b = RuleBuilder::default();
        for e in &exprs {
            b.expr(e, (&self.maps, &self.sets), &family, &tname);
        }
        let comment = r.get("comment").and_then(Value::as_str).map(str::to_string);
        let text = exprs.iter().map(compact).collect::<Vec<_>>().join(" ");
        for x in &b.xt {
            *self
                .xt
                .entry(format!("{family} {tname}"))
                .or_default()
                .entry(x.clone())
                .or_default() += 1;
        }
        let rule = b.finish(handle, text, comment);
        let t = &mut self.rs.tables[ti];
        let ci = t.chain_index_or_add(str_of(r, "chain"), 0);
        t.chains[ci].rules.push(rule);
        let _ = i;
    }
}

/// A set or map element as nft prints it: "10.0.0.0/8", "10.0.0.1-10.0.0.9", "1.2.3.4 . tcp . 80"
/// (an element with a comment or timeout is `{"elem": {"val": ...}}`); None when not understood.
fn elem_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(e) = o.get("elem") {
                return elem_text(e.get("val")?);
            }
            if let Some(px) = o.get("prefix") {
                return Some(format!(
                    "{}/{}",
                    px.get("addr").and_then(value_str)?,
                    px.get("len")?.as_u64()?
                ));
            }
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                return Some(format!(
                    "{}-{}",
                    elem_text(r.first()?)?,
                    elem_text(r.get(1)?)?
                ));
            }
            let parts = o.get("concat")?.as_array()?;
            parts
                .iter()
                .map(elem_text)
                .collect::<Option<Vec<_>>>()?
                .join(" . ")
        }
        _ => return None,
    })
}

/// A map element's key as nft prints it: "172.30.0.41 . tcp . 80" for a concatenation.
fn key_text(k: &Value) -> String {
    if let Some(t) = elem_text(k) {
        return t;
    }
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => match o.get("concat").and_then(Value::as_array) {
            Some(parts) => parts.iter().map(key_text).collect::<Vec<_>>().join(" . "),
            None => k.to_string(),
        },
        other => other.to_string(),
    }
}

/// One field of a JSON concatenation key.
fn json_key_field(v: &Value) -> Option<KeyField> {
    if let Some(k) = v.pointer("/meta/key").and_then(Value::as_str) {
        return KeyField::from_words(&["meta", k]);
    }
    let p = v.get("payload")?;
    KeyField::from_words(&[str_of(p, "protocol"), str_of(p, "field")])
}

fn verdict_of(v: &Value) -> Option<Action> {
    let o = v.as_object()?;
    let (k, body) = o.iter().next()?;
    Some(match k.as_str() {
        "accept" => Action::Accept,
        "drop" => Action::Drop,
        "return" => Action::Return,
        "continue" => Action::None,
        "jump" => Action::Jump {
            chain: str_of(body, "target").into(),
        },
        "goto" => Action::Goto {
            chain: str_of(body, "target").into(),
        },
        _ => return None,
    })
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ports_of(v: &Value) -> Option<Vec<PortRange>> {
    match v {
        Value::Number(n) => {
            let p = u16::try_from(n.as_u64()?).ok()?;
            Some(vec![PortRange { from: p, to: p }])
        }
        Value::String(s) => Some(vec![parse_port_range(s).ok()?]),
        Value::Object(o) => {
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                let a = u16::try_from(r.first()?.as_u64()?).ok()?;
                let b = u16::try_from(r.get(1)?.as_u64()?).ok()?;
                Some(vec![PortRange { from: a, to: b }])
            } else if let Some(s) = o.get("set").and_then(Value::as_array) {
                let mut out = Vec::new();
                for x in s {
                    out.extend(ports_of(x)?);
                }
                Some(out)
            } else {
                None
            }
        }
        Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                out.extend(ports_of(x)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn strings_of(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        Value::Object(o) => o.get("set").and_then(strings_of),
        _ => None,
    }
}

impl RuleBuilder {
    fn unknown(&mut self, e: &Value) {
        self.push(false, Cond::Unknown { text: compact(e) });
    }

    fn expr(&mut self, e: &Value, named: (&VerdictMaps, &NamedSets), family: &str, table: &str) {
        let (maps, sets) = named;
        let Some(o) = e.as_object() else {
            self.unknown(e);
            return;
        };
        let Some((k, body)) = o.iter().next() else {
            return;
        };
        match k.as_str() {
            "match" => {
                if !self.set_match(body, sets, family, table) && !self.match_expr(body) {
                    self.unknown(e);
                }
            }
            "counter" => {
                if let (Some(p), Some(b)) = (
                    body.get("packets").and_then(Value::as_u64),
                    body.get("bytes").and_then(Value::as_u64),
                ) {
                    self.counters = Some([p, b]);
                }
            }
            "comment" => {}
            "accept" | "drop" | "return" | "jump" | "goto" | "continue" => {
                self.terminal = verdict_of(e);
            }
            "reject" => {
                self.terminal = Some(Action::Reject {
                    with: body.get("expr").and_then(value_str),
                })
            }
            "dnat" | "snat" => {
                let addr = body.get("addr").and_then(value_str);
                let port = body.get("port").and_then(value_str);
                let text = match (&addr, &port) {
                    (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    (Some(a), None) => a.clone(),
                    (None, Some(p)) => format!(":{p}"),
                    (None, None) => String::new(),
                };
                match parse_nat_to(&text) {
                    Ok(to) if !text.is_empty() => {
                        self.nat = Some(if k == "dnat" {
                            Action::Dnat { to }
                        } else {
                            Action::Snat { to }
                        })
                    }
                    _ => {
                        self.nat = Some(Action::Other {
                            text: format!("{k} {} (target not understood)", compact(body)),
                            terminal: true,
                        })
                    }
                }
            }
            "masquerade" | "redirect" => {
                let ports = body
                    .get("port")
                    .and_then(ports_of)
                    .and_then(|p| p.first().copied());
                self.nat = Some(if k == "masquerade" {
                    Action::Masquerade { ports }
                } else {
                    Action::Redirect { ports }
                });
            }
            "log" => {
                if self.other.is_none() {
                    self.other = Some(Action::Log {
                        prefix: body.get("prefix").and_then(value_str),
                    })
                }
            }
            "mangle" => {
                let is_mark = body
                    .pointer("/key/meta/key")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k == "mark");
                let v = body.get("value");
                let mark = |v: &Value| -> Option<(u32, u32)> {
                    if let Some(n) = v.as_u64() {
                        return Some((n as u32, u32::MAX));
                    }
                    let o = v.as_object()?;
                    let (op, args) = o.iter().next()?;
                    let n = args.as_array()?.get(1)?.as_u64()? as u32;
                    match op.as_str() {
                        "|" => Some((n, n)),
                        "^" => Some((n, 0)),
                        "&" => Some((0, !n)),
                        _ => None,
                    }
                };
                match (is_mark, v.and_then(mark)) {
                    (true, Some((value, mask))) => self.other = Some(Action::Mark { value, mask }),
                    _ => {
                        self.other = Some(Action::Other {
                            text: format!("mangle {}", compact(body)),
                            terminal: false,
                        })
                    }
                }
            }
            "vmap" => {
                let fields: Vec<KeyField> = body
                    .pointer("/key/concat")
                    .and_then(Value::as_array)
                    .map(|parts| parts.iter().filter_map(json_key_field).collect())
                    .unwrap_or_default();
                let concat_ok = body
                    .pointer("/key/concat")
                    .and_then(Value::as_array)
                    .is_some_and(|p| p.len() == fields.len() && !fields.is_empty());
                let key = match body.pointer("/key/meta/key").and_then(Value::as_str) {
                    _ if concat_ok => VmapKey::Concat,
                    Some("iifname") | Some("iif") => VmapKey::InIface,
                    Some("oifname") | Some("oif") => VmapKey::OutIface,
                    _ if body.pointer("/key/numgen/mode").and_then(Value::as_str)
                        == Some("random") =>
                    {
                        VmapKey::Random
                    }
                    _ => VmapKey::Other,
                };
                let entries = match body.get("data") {
                    Some(Value::String(s)) if s.starts_with('@') => maps
                        .get(&(family.to_string(), table.to_string(), s[1..].to_string()))
                        .cloned()
                        .unwrap_or_default(),
                    Some(d) => d
                        .get("set")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| {
                                    let p = p.as_array()?;
                                    let k = key_text(p.first()?);
                                    Some((k, verdict_of(p.get(1)?)?))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                self.terminal = Some(Action::Vmap {
                    key,
                    entries,
                    fields,
                });
            }
            "xt" => {
                // iptables-nft's compat expressions: nft's JSON carries only the name.
                let name = str_of(body, "name").to_string();
                self.xt.push(name.clone());
                let unknown_to = |what: &str| NatTo {
                    addr: None,
                    addr_to: None,
                    ports: None,
                    text: format!("? (iptables-nft {what}: nft's JSON does not carry its address)"),
                };
                if str_of(body, "type") == "target" {
                    self.nat = Some(match name.as_str() {
                        "DNAT" => Action::Dnat {
                            to: unknown_to("DNAT"),
                        },
                        "SNAT" => Action::Snat {
                            to: unknown_to("SNAT"),
                        },
                        "MASQUERADE" => Action::Masquerade { ports: None },
                        "REDIRECT" => Action::Redirect { ports: None },
                        _ => Action::Other {
                            text: format!(
                                "iptables-nft target {name} (its arguments are not in nft's JSON: read this table with iptables-nft-save)"
                            ),
                            terminal: false,
                        },
                    });
                } else if name != "comment" {
                    self.push(
                        false,
                        Cond::Unknown {
                            text: format!(
                                "iptables-nft match {name} (its arguments are not in nft's JSON)"
                            ),
                        },
                    );
                }
            }
            "notrack" | "set" | "ct helper" | "quota" | "limit" => self.unknown(e),
            _ => self.unknown(e),
        }
    }

    /// A set lookup (`ip daddr @s`, a concatenation `. @s`, an anonymous address set); false
    /// when `m` is no set lookup.
    fn set_match(&mut self, m: &Value, sets: &NamedSets, family: &str, table: &str) -> bool {
        let negated = match str_of(m, "op") {
            "==" | "in" => false,
            "!=" => true,
            _ => return false,
        };
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            return false;
        };
        let fields: Option<Vec<KeyField>> = match left.get("concat").and_then(Value::as_array) {
            Some(parts) => parts.iter().map(json_key_field).collect(),
            None => json_key_field(left).map(|f| vec![f]),
        };
        let Some(fields) = fields.filter(|f| !f.is_empty()) else {
            return false;
        };
        let cond = match right {
            Value::String(s) if s.starts_with('@') => {
                let name = &s[1..];
                let texts = sets
                    .get(&(family.to_string(), table.to_string(), name.to_string()))
                    .cloned();
                nft_set(name, fields, texts)
            }
            // Anonymous sets of addresses (ports and protocols are lists already).
            Value::Object(o)
                if o.get("set").and_then(Value::as_array).is_some()
                    && (fields.len() > 1
                        || matches!(fields[0], KeyField::SrcAddr | KeyField::DstAddr)) =>
            {
                let texts = o
                    .get("set")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|e| elem_text(e).unwrap_or_else(|| "?".into()))
                    .collect();
                nft_set("", fields, Some(texts))
            }
            _ => return false,
        };
        self.push(negated, cond);
        true
    }

    /// Translate one `match`; false when it is not understood.
    fn match_expr(&mut self, m: &Value) -> bool {
        let op = str_of(m, "op");
        let negated = match op {
            "==" | "in" => false,
            "!=" => true,
            _ => return false,
        };
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            return false;
        };
        if let Some(key) = left.pointer("/meta/key").and_then(Value::as_str) {
            return match key {
                "iifname" | "oifname" | "iif" | "oif" => {
                    let Some(name) = right.as_str() else {
                        return false;
                    };
                    let name = name.to_string();
                    let c = if key.starts_with('i') {
                        Cond::InIface { name }
                    } else {
                        Cond::OutIface { name }
                    };
                    self.push(negated, c);
                    true
                }
                "l4proto" | "protocol" => match value_str(right) {
                    Some(p) => {
                        self.push(negated, Cond::Proto { proto: p });
                        true
                    }
                    None => false,
                },
                "mark" => match right.as_u64() {
                    Some(v) => {
                        self.push(
                            negated,
                            Cond::Mark {
                                value: v as u32,
                                mask: u32::MAX,
                            },
                        );
                        true
                    }
                    None => false,
                },
                _ => false,
            };
        }
        if let Some(p) = left.get("payload") {
            let proto = str_of(p, "protocol");
            let field = str_of(p, "field");
            match (proto, field) {
                ("ip" | "ip6", "saddr" | "daddr") => {
                    let dir = if field == "saddr" { Dir::Src } else { Dir::Dst };
                    let net = match right {
                        Value::String(s) => parse_net(s).ok(),
                        Value::Object(o) => o.get("prefix").and_then(|px| {
                            parse_net(&format!(
                                "{}/{}",
                                str_of(px, "addr"),
                                px.get("len")?.as_u64()?
                            ))
                            .ok()
                        }),
                        _ => None,
                    };
                    if let Some(net) = net {
                        self.push(negated, Cond::Addr { dir, net });
                        return true;
                    }
                    if let Some(r) = right.get("range").and_then(Value::as_array) {
                        let a = r
                            .first()
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<IpAddr>().ok());
                        let b = r
                            .get(1)
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse::<IpAddr>().ok());
                        if let (Some(from), Some(to)) = (a, b) {
                            self.push(negated, Cond::AddrRange { dir, from, to });
                            return true;
                        }
                    }
                    false
                }
                ("ip", "protocol") | ("ip6", "nexthdr") => match value_str(right) {
                    Some(p) => {
                        self.push(negated, Cond::Proto { proto: p });
                        true
                    }
                    None => false,
                },
                (l4, "dport" | "sport") => {
                    let dir = if field == "sport" { Dir::Src } else { Dir::Dst };
                    let Some(ports) = ports_of(right) else {
                        return false;
                    };
                    if l4 != "th" {
                        self.push(false, Cond::Proto { proto: l4.into() });
                    }
                    self.push(negated, Cond::Port { dir, ports });
                    true
                }
                _ => false,
            }
        } else if let Some(ct) = left.get("ct") {
            let key = str_of(ct, "key");
            let Some(vals) = strings_of(right) else {
                return false;
            };
            let states = vals.iter().map(|s| s.to_ascii_uppercase()).collect();
            match key {
                "state" | "status" => {
                    self.push(negated, Cond::CtState { states });
                    true
                }
                _ => false,
            }
        } else if let Some(fib) = left.get("fib") {
            if str_of(fib, "result") != "type" {
                return false;
            }
            let flags = fib.get("flags").and_then(strings_of).unwrap_or_default();
            let dir = if flags.iter().any(|f| f == "saddr") {
                Dir::Src
            } else {
                Dir::Dst
            };
            let Some(types) = strings_of(right) else {
                return false;
            };
            self.push(
                negated,
                Cond::AddrType {
                    dir,
                    types: types.iter().map(|t| t.to_ascii_uppercase()).collect(),
                },
            );
            true
        } else if let Some(and) = left.get("&").and_then(Value::as_array) {
            let is_mark = and
                .first()
                .and_then(|x| x.pointer("/meta/key"))
                .and_then(Value::as_str)
                == Some("mark");
            match (is_mark, and.get(1).and_then(Value::as_u64), right.as_u64()) {
                (true, Some(mask), Some(v)) => {
                    self.push(
                        negated,
                        Cond::Mark {
                            value: v as u32,
                            mask: mask as u32,
                        },
                    );
                    true
                }
                _ => false,
            }
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
{"table": {"family": "ip", "name": "t", "handle": 2}},
{"map": {"family": "ip", "name": "m", "table": "t", "type": "ifname", "handle": 6, "map": "verdict", "elem": [["docker0", {"jump": {"target": "c1b"}}]]}},
{"chain": {"family": "ip", "table": "t", "name": "c1b", "handle": 1}},
{"chain": {"family": "ip", "table": "t", "name": "nat", "handle": 3, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
{"chain": {"family": "ip", "table": "t", "name": "pre", "handle": 5, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"rule": {"family": "ip", "table": "t", "chain": "nat", "handle": 9, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, {"range": [8000, 8080]}]}}}, {"dnat": {"addr": "10.0.0.2", "port": 80}}]}},
{"rule": {"family": "ip", "table": "t", "chain": "nat", "handle": 10, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}]}},
{"rule": {"family": "ip", "table": "t", "chain": "nat", "handle": 11, "expr": [{"weird": {"x": 1}}, {"accept": null}]}},
{"rule": {"family": "ip", "table": "t", "chain": "pre", "handle": 16, "expr": [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@m"}}]}},
{"rule": {"family": "ip", "table": "t", "chain": "pre", "handle": 19, "comment": "hi there", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"log": {"prefix": "x "}}, {"drop": null}]}}
]}"#;

    #[test]
    fn json_loads_and_degrades_one_rule() {
        let rs = parse(JSON).unwrap();
        assert!(rs.problems.is_empty(), "{:?}", rs.problems);
        let t = &rs.tables[0];
        let nat = t.chain("nat").unwrap();
        assert_eq!(nat.base.unwrap().priority, -100);
        assert_eq!(nat.rules.len(), 3);
        assert!(matches!(nat.rules[0].action, Action::Dnat { .. }));
        assert_eq!(
            nat.rules[1].action,
            Action::Mark {
                value: 0x4000,
                mask: 0x4000
            }
        );
        assert!(matches!(nat.rules[2].matches[0].cond, Cond::Unknown { .. }));
        assert_eq!(nat.rules[2].action, Action::Accept);
        let pre = t.chain("pre").unwrap();
        assert_eq!(pre.policy.as_ref().unwrap().verdict, "DROP");
        match &pre.rules[0].action {
            Action::Vmap { key, entries, .. } => {
                assert_eq!(*key, VmapKey::OutIface);
                assert_eq!(entries[0].0, "docker0");
            }
            a => panic!("{a:?}"),
        }
        assert_eq!(pre.rules[1].action, Action::Drop);
        assert_eq!(pre.rules[1].comment.as_deref(), Some("hi there"));
        assert!(parse("{nope").is_err());
    }
}
