//! `nettool explain-nat`: the rules in plain words, and a packet walk.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::facts::firewall::local_facts;
use crate::facts::{self, Parts, ReadOptions};
use crate::nat::explain::{self, describe_match, Summary};
use crate::nat::model::Ruleset;
use crate::nat::walk::{self, LocalFacts, Packet, RouteFact, Walk, WalkOptions};
use crate::nat::{self};
use crate::netns::NetNs;
use crate::output::{paint, print_json};

/// Examples and notes for `nettool explain-nat --help`.
pub(crate) const EXPLAIN_NAT_HELP: &str = "Reads the rules live from a namespace (iptables-nft-save, iptables-legacy-save and\n`nft -j list ruleset`, run inside it) or from files (iptables-save with or without -c,\n`iptables -S`, `nft -j list ruleset` JSON, `nft list ruleset` text).\n\nExamples:\n  nettool explain-nat\n  nettool explain-nat --netns nt-lab-host --json\n  nettool explain-nat -f rules.iptables-save\n  nettool explain-nat --netns web --packet 'tcp 203.0.113.5:40000 -> 192.0.2.10:8080 in eth0'\n  nettool explain-nat -f rules.save --local-addr 192.0.2.10@eth0 --local-addr 172.17.0.1@docker0 \\\n      --route 172.17.0.0/16@docker0 --route default@eth0 \\\n      --packet 'tcp 203.0.113.5:40000 -> 192.0.2.10:8080 in eth0'\n  nettool explain-nat --from-host --packet 'tcp 127.0.0.1:40000 -> 127.0.0.1:8080'";

/// Arguments of `explain-nat`.
#[derive(Debug, Args)]
pub(crate) struct ExplainNatArgs {
    /// Read rules from this file instead of a live namespace (repeatable; "-" is stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<String>,
    /// Read the rules live from this namespace: NAME, PATH, pid:N, container:NAME (default: the current one).
    #[arg(long, value_name = "TARGET")]
    pub netns: Option<String>,
    /// The table of an `iptables -S` listing (it does not say; guessed from the targets otherwise).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Walk one packet: 'PROTO SRC[:PORT] -> DST[:PORT] [in IFACE] [out IFACE] [mark N]'.
    #[arg(long, value_name = "SPEC")]
    pub packet: Option<String>,
    /// The packet is generated on this host (OUTPUT path) rather than arriving on an interface.
    #[arg(long)]
    pub from_host: bool,
    /// Assumed connection state of the packet: NEW, ESTABLISHED, RELATED, INVALID.
    #[arg(long, default_value = "NEW", value_name = "STATE")]
    pub state: String,
    /// A local address for the walk, ADDR or ADDR@IFACE (repeatable; default from the namespace).
    #[arg(long = "local-addr", value_name = "ADDR[@IFACE]")]
    pub local_addrs: Vec<String>,
    /// A route for the walk, NET@IFACE or default@IFACE (repeatable; default from the namespace).
    #[arg(long = "route", value_name = "NET@IFACE")]
    pub routes: Vec<String>,
    /// Which load-balancing branch the walk follows (1 = first).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub branch: usize,
    /// Also list every rule with its line, in plain words.
    #[arg(long)]
    pub rules: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    walk: Option<&'a Walk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ruleset: Option<&'a Ruleset>,
}

fn usage(msg: String) -> anyhow::Result<i32> {
    eprintln!("nettool explain-nat: {msg}");
    Ok(2)
}

/// Parse `ADDR[@IFACE]`.
fn parse_local(s: &str) -> Result<(IpAddr, String), String> {
    let (a, i) = s.split_once('@').unwrap_or((s, ""));
    let a: IpAddr = a.parse().map_err(|_| {
        format!("--local-addr '{s}': expected ADDR or ADDR@IFACE, e.g. 192.0.2.10@eth0")
    })?;
    Ok((a, i.to_string()))
}

/// Parse `NET@IFACE` / `default@IFACE`.
fn parse_route(s: &str) -> Result<RouteFact, String> {
    let bad =
        || format!("--route '{s}': expected NET@IFACE, e.g. 172.17.0.0/16@docker0 or default@eth0");
    let (n, dev) = s.split_once('@').ok_or_else(bad)?;
    let net = if n == "default" {
        "0.0.0.0/0".parse().map_err(|_| bad())?
    } else if n == "default6" {
        "::/0".parse().map_err(|_| bad())?
    } else {
        nat::iptables::parse_net(n).map_err(|_| bad())?
    };
    if dev.is_empty() {
        return Err(bad());
    }
    Ok(RouteFact {
        net,
        dev: dev.to_string(),
        src: None,
    })
}

/// Run `explain-nat`.
pub(crate) fn run(a: ExplainNatArgs) -> anyhow::Result<i32> {
    if !a.files.is_empty() && a.netns.is_some() {
        return usage("give either --file or --netns, not both".into());
    }
    let packet = match &a.packet {
        Some(spec) => match Packet::parse(spec) {
            Ok(mut p) => {
                p.from_host = a.from_host;
                p.state = a.state.to_ascii_uppercase();
                if !matches!(
                    p.state.as_str(),
                    "NEW" | "ESTABLISHED" | "RELATED" | "INVALID" | "UNTRACKED"
                ) {
                    return usage(format!(
                        "--state {}: use NEW, ESTABLISHED, RELATED, INVALID or UNTRACKED",
                        a.state
                    ));
                }
                if p.from_host && p.in_iface.is_some() {
                    return usage(
                        "--from-host packets do not arrive on an interface: drop 'in IFACE'".into(),
                    );
                }
                Some(p)
            }
            Err(e) => return usage(e),
        },
        None => {
            if a.from_host {
                return usage("--from-host needs --packet".into());
            }
            None
        }
    };
    let mut flags_facts = LocalFacts::default();
    for s in &a.local_addrs {
        match parse_local(s) {
            Ok(x) => flags_facts.addrs.push(x),
            Err(e) => return usage(e),
        }
    }
    for s in &a.routes {
        match parse_route(s) {
            Ok(r) => flags_facts.routes.push(r),
            Err(e) => return usage(e),
        }
    }

    let live = a.files.is_empty();
    let (rs, snap) = if live {
        let ns = match &a.netns {
            Some(t) => NetNs::open(t).with_context(|| format!("opening namespace {t}"))?,
            None => NetNs::current().context("opening the current namespace")?,
        };
        // One read of the machine: the rules, this namespace's addresses and routes, and who
        // is behind every other address; with a packet, its listeners too (what takes a
        // packet the walk delivers here).
        let snap = facts::read_with(
            &ReadOptions::host(ns.clone()),
            &Parts {
                listeners: packet.is_some(),
                ..Parts::EXPLAIN_NAT
            },
            None,
        )
        .with_context(|| format!("reading namespace {}", ns.label()))?;
        let rs = snap
            .firewall
            .ruleset_all(ns.label())
            .map_err(|why| nat::NatError::NoTools {
                ns: ns.label().to_string(),
                why,
            })
            .with_context(|| format!("reading the rules in {}", ns.label()))?;
        (rs, Some(snap))
    } else {
        let mut rs = Ruleset::default();
        for f in &a.files {
            let part = if f == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading rules from stdin")?;
                nat::parse_text(&text, a.table.as_deref(), "stdin")?
            } else {
                nat::load_file(f, a.table.as_deref()).with_context(|| format!("loading {f}"))?
            };
            let mut part = part;
            for p in &mut part.problems {
                p.message = if p.line > 0 {
                    format!("{f}:{}: {}", p.line, p.message)
                } else {
                    format!("{f}: {}", p.message)
                };
            }
            rs.merge(part);
        }
        (rs, None)
    };

    let names: HashMap<IpAddr, String> = match &snap {
        Some(snap) => snap.address_owners(),
        None => HashMap::new(),
    };
    // Live: the summary's representative packets walk through the namespace's own addresses.
    let live_facts = snap.as_ref().map(|s| local_facts(s.host()));
    let summary = explain::summarize_on(&rs, &names, live_facts.as_ref());

    let walk_result = match &packet {
        Some(p) => {
            let as_here = a.local_addrs.is_empty() && a.routes.is_empty();
            let mut facts = match (&live_facts, as_here) {
                (Some(live), true) => live.clone(),
                _ => flags_facts.clone(),
            };
            if facts.forwarding.is_none() && !facts.routes.is_empty() {
                facts.forwarding = Some(true);
            }
            let opts = WalkOptions {
                branch: a.branch.saturating_sub(1),
                ..WalkOptions::default()
            };
            let mut w = walk::walk_with(&rs, p, &facts, &opts);
            // Walked through the live namespace, the verdict says which socket takes a packet
            // delivered here, or that none does (the walk alone knows no sockets); from files
            // or given addresses it says where the packet arrives.
            if let (Some(snap), true) = (&snap, as_here) {
                w.summary = w.outcome(&snap.host().listeners);
            }
            Some(w)
        }
        None => None,
    };

    let code = if summary.problems.is_empty() { 0 } else { 1 };
    if a.json {
        print_json(&Report {
            summary: &summary,
            walk: walk_result.as_ref(),
            ruleset: a.rules.then_some(&rs),
        })?;
        return Ok(code);
    }
    match &walk_result {
        Some(w) => {
            print!("{}", render_walk(w));
            // The stderr line below says they are listed above: the walk lists them too.
            if !summary.problems.is_empty() {
                print!("\n{}", paint("Lines that could not be read\n", "31"));
                for p in &summary.problems {
                    println!("  {}", p.message);
                }
            }
        }
        None => {
            print!("{}", render_summary(&summary));
            if a.rules {
                print!("{}", render_rules(&rs));
            }
        }
    }
    if !summary.problems.is_empty() {
        eprintln!(
            "nettool explain-nat: {} line(s) could not be read (listed above); the rest was explained",
            summary.problems.len()
        );
    }
    Ok(code)
}

fn at(table: &str, chain: &str, line: usize) -> String {
    paint(&format!("[{table} {chain} line {line}]"), "2")
}

/// The summary as text: published ports first.
pub(crate) fn render_summary(s: &Summary) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{} rule(s) in {} table(s) from {}\n",
        s.rules,
        s.tables,
        if s.source.is_empty() {
            "input"
        } else {
            &s.source
        }
    ));
    for w in &s.warnings {
        o.push_str(&format!("{} {w}\n", paint("warning:", "33")));
    }
    for r in &s.recognised {
        o.push_str(&format!("Recognised: {}\n", r.detail));
    }
    o.push('\n');
    o.push_str(&paint("Published ports (destination NAT)\n", "1"));
    if s.published.is_empty() {
        o.push_str("  none: no DNAT or REDIRECT rule is reached from a hook\n");
    }
    for p in &s.published {
        o.push_str(&format!("  {}\n", p.sentence));
        for t in &p.targets {
            let hits = t
                .counters
                .map(|[p, b]| format!(" ({p} packets, {b} bytes so far)"))
                .unwrap_or_default();
            o.push_str(&format!(
                "      -> {} {}{hits}\n",
                t.to,
                at(&t.table, &t.chain, t.line)
            ));
        }
        for e in &p.entries {
            o.push_str(&format!("      via {}\n", paint(&e.path.join(" -> "), "2")));
        }
        for r in &p.reach {
            o.push_str(&format!("      walked {r}\n"));
        }
    }
    if !s.services.is_empty() {
        o.push('\n');
        o.push_str(&paint("kube-proxy services\n", "1"));
        for sv in &s.services {
            let eps: Vec<String> = sv
                .endpoints
                .iter()
                .map(|(e, sh)| format!("{e} ({:.1}%)", sh * 100.0))
                .collect();
            o.push_str(&format!(
                "  {} [{}]: {}\n",
                sv.name,
                sv.chain,
                if eps.is_empty() {
                    "no endpoints".to_string()
                } else {
                    eps.join(", ")
                }
            ));
        }
    }
    o.push('\n');
    o.push_str(&paint("Source NAT\n", "1"));
    if s.source_nat.is_empty() {
        o.push_str("  none\n");
    }
    for n in &s.source_nat {
        o.push_str(&format!(
            "  {} {}\n",
            n.sentence,
            at(&n.table, &n.chain, n.line)
        ));
    }
    if !s.forward_accepts.is_empty() {
        o.push('\n');
        o.push_str(&paint(
            "Forwarding allowed to specific ports (filter ACCEPT)\n",
            "1",
        ));
        for n in &s.forward_accepts {
            o.push_str(&format!(
                "  {} {}\n",
                n.sentence,
                at(&n.table, &n.chain, n.line)
            ));
        }
    }
    o.push('\n');
    o.push_str(&paint("Drops and rejects\n", "1"));
    if s.drops.is_empty() {
        o.push_str("  none\n");
    }
    for d in &s.drops {
        let when = if d.when.is_empty() {
            "everything reaching it".to_string()
        } else {
            d.when.join(", ")
        };
        let cmt = d
            .comment
            .as_deref()
            .map(|c| format!(" \"{c}\""))
            .unwrap_or_default();
        o.push_str(&format!(
            "  {} at {}: {when}{cmt} {}\n",
            d.action,
            d.hooks
                .iter()
                .map(|h| h.chain_name())
                .collect::<Vec<_>>()
                .join("/"),
            at(&d.table, &d.chain, d.line)
        ));
        if !d.verified.is_empty() && d.action != "policy DROP" {
            o.push_str(&format!("      {}\n", d.verified));
        }
    }
    if !s.flows.is_empty() {
        o.push('\n');
        o.push_str(&paint("Open and closed (walked)\n", "1"));
        for f in &s.flows {
            o.push_str(&format!("  {}\n", f.sentence));
        }
    }
    if let Some(h) = &s.host {
        if !s.published.is_empty() || !s.flows.is_empty() || !s.drops.is_empty() {
            o.push('\n');
            o.push_str(&paint("Walked through\n", "1"));
            for a in &h.assumptions {
                o.push_str(&format!("  {a}\n"));
            }
        }
    }
    let mut odd = |title: &str, list: &[explain::Oddity]| {
        if list.is_empty() {
            return;
        }
        o.push('\n');
        o.push_str(&paint(&format!("{title}\n"), "1"));
        for x in list {
            o.push_str(&format!(
                "  {} {}\n",
                x.what,
                at(&x.table, &x.chain, x.line)
            ));
        }
    };
    odd("Jumps to chains that do not exist", &s.dangling);
    odd("Chains never reached", &s.unreached);
    odd("Matches that cannot be evaluated", &s.unknown);
    if !s.problems.is_empty() {
        o.push('\n');
        o.push_str(&paint("Lines that could not be read\n", "31"));
        for p in &s.problems {
            o.push_str(&format!("  {}\n", p.message));
        }
    }
    o
}

/// Every rule, one per line, in plain words.
pub(crate) fn render_rules(rs: &Ruleset) -> String {
    let mut o = String::from("\n");
    o.push_str(&paint("Rules\n", "1"));
    if rs
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .flat_map(|c| &c.rules)
        .any(|r| r.counters.is_some())
    {
        o.push_str("     line   packets      bytes  rule\n");
    }
    for t in &rs.tables {
        for c in &t.chains {
            let base = c
                .base
                .map(|b| format!(" (hook {}, priority {})", b.hook.chain_name(), b.priority))
                .unwrap_or_default();
            let pol = c
                .policy
                .as_ref()
                .map(|p| format!(", policy {}", p.verdict))
                .unwrap_or_default();
            o.push_str(&format!(
                "  {} {} {}{base}{pol}\n",
                t.family, t.name, c.name
            ));
            for r in &c.rules {
                let conds: Vec<String> = r.matches.iter().map(describe_match).collect();
                let act = explain::describe_action(&r.action);
                let counters = r
                    .counters
                    .map(|[p, b]| format!("{p:>8} {b:>10}  "))
                    .unwrap_or_default();
                o.push_str(&format!(
                    "    {:>5}  {counters}{}{act}\n",
                    r.line,
                    if conds.is_empty() {
                        String::new()
                    } else {
                        format!("if {}: ", conds.join(", "))
                    }
                ));
            }
        }
    }
    o
}

/// The walk as text: each step with its rule line, each rewrite, the verdict.
pub(crate) fn render_walk(w: &Walk) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "Packet: {}{}{}\n",
        w.packet,
        w.packet
            .in_iface
            .as_deref()
            .map(|i| format!(" arriving on {i}"))
            .unwrap_or_default(),
        if w.packet.from_host {
            " from this host"
        } else {
            ""
        }
    ));
    let mut last_hook = None;
    for s in &w.steps {
        if last_hook != Some(s.hook) && s.chain != "routing" {
            o.push_str(&format!("{}\n", paint(s.hook.chain_name(), "1")));
            last_hook = Some(s.hook);
        }
        if s.chain == "routing" {
            o.push_str(&format!("  {}\n", s.what));
            continue;
        }
        let loc = if s.line == 0 {
            format!("{} {}", s.table, s.chain)
        } else {
            format!("{} {} line {}", s.table, s.chain, s.line)
        };
        o.push_str(&format!("  {:<36} {}\n", loc, s.what));
        if let Some(t) = &s.rewritten {
            o.push_str(&format!("  {:<36} {} {}\n", "", paint("now:", "33"), t));
        }
        for b in &s.branches {
            o.push_str(&format!(
                "  {:<36}   {} {:5.1}%  line {}  -> {}\n",
                "",
                if b.taken { "*" } else { " " },
                b.share * 100.0,
                b.line,
                b.leads_to
            ));
        }
    }
    let colour = match w.verdict.as_str() {
        "dropped" | "rejected" | "no-route" => "31",
        _ => "32",
    };
    o.push_str(&format!("Verdict: {}\n", paint(&w.summary, colour)));
    if w.final_tuple != w.packet.to_string() {
        o.push_str(&format!("Rewritten: {} => {}\n", w.packet, w.final_tuple));
    }
    if !w.assumptions.is_empty() {
        o.push_str("Assumptions:\n");
        for a in &w.assumptions {
            o.push_str(&format!("  - {a}\n"));
        }
    }
    o
}
