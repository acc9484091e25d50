//! The host's firewall as the tools dump it (iptables and ip6tables, nft and legacy
//! backends, native nft JSON), kept as text in the snapshot: the NAT model is rebuilt from
//! it with the explainer's own parsers, so a replay judges exactly what the live run judged.

use std::collections::HashSet;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::nat::model::Ruleset;
use crate::nat::walk::{LocalFacts, RouteFact};
use crate::nat::{iptables, nft};
use crate::netns::exec::{self, ExecOptions};
use crate::netns::NetNs;

use super::NsFacts;

/// The raw dumps; `None` where the tool is missing or failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallDump {
    /// iptables-nft-save.
    pub iptables_nft: Option<String>,
    /// iptables-legacy-save.
    pub iptables_legacy: Option<String>,
    /// ip6tables-nft-save.
    pub ip6tables_nft: Option<String>,
    /// ip6tables-legacy-save.
    pub ip6tables_legacy: Option<String>,
    /// `nft -j list ruleset`.
    pub nft_json: Option<String>,
    /// Why a tool gave nothing.
    pub errors: Vec<String>,
}

/// Run a tool inside `ns`; its stdout, or why not.
pub fn capture(ns: &NetNs, argv: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    TOOL_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let child =
        exec::spawn(ns, cmd, &ExecOptions::default()).map_err(|e| format!("{}: {e}", argv[0]))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Tools run by this process (reported in the snapshot's cost).
pub(crate) static TOOL_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Dump every firewall of `ns`, the five tools in parallel.
pub fn dump(ns: &NetNs) -> FirewallDump {
    let tools: [&[&str]; 5] = [
        &["iptables-nft-save"],
        &["iptables-legacy-save"],
        &["ip6tables-nft-save"],
        &["ip6tables-legacy-save"],
        &["nft", "-j", "list", "ruleset"],
    ];
    let mut outs: Vec<Result<String, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = tools
            .iter()
            .map(|argv| s.spawn(move || capture(ns, argv)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    let mut d = FirewallDump::default();
    let mut take = |r: Result<String, String>| match r {
        Ok(t) => Some(t),
        Err(e) => {
            d.errors.push(e);
            None
        }
    };
    let nft_json = take(outs.pop().expect("five"));
    let ip6_legacy = take(outs.pop().expect("five"));
    let ip6_nft = take(outs.pop().expect("five"));
    let legacy = take(outs.pop().expect("five"));
    let v4_nft = take(outs.pop().expect("five"));
    d.iptables_nft = v4_nft;
    d.iptables_legacy = legacy;
    d.ip6tables_nft = ip6_nft;
    d.ip6tables_legacy = ip6_legacy;
    d.nft_json = nft_json;
    d
}

/// True when an iptables-save text holds at least one rule.
pub fn has_rules(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("-A ") || (l.starts_with('[') && l.contains("] -A "))
    })
}

fn rule_lines(text: Option<&str>) -> HashSet<String> {
    text.map(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("-A ") || l.contains("] -A "))
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

impl FirewallDump {
    /// The rule set of one family (false: IPv4), built like `nat::load_live` builds it: both
    /// iptables backends, and native nft tables (iptables-nft's own tables skipped).
    pub fn ruleset(&self, v6: bool, label: &str) -> Ruleset {
        let (nft_text, legacy_text, tool) = if v6 {
            (&self.ip6tables_nft, &self.ip6tables_legacy, "ip6tables")
        } else {
            (&self.iptables_nft, &self.iptables_legacy, "iptables")
        };
        let mut rs = Ruleset::default();
        let nft_has = nft_text.as_deref().is_some_and(has_rules);
        let legacy_has = legacy_text.as_deref().is_some_and(has_rules);
        for (name, text, has, other_has) in [
            ("nft", nft_text, nft_has, legacy_has),
            ("legacy", legacy_text, legacy_has, nft_has),
        ] {
            let Some(t) = text else { continue };
            if !has && other_has {
                continue;
            }
            let mut part = iptables::parse_save(t);
            part.source = format!("{tool}-{name}-save in {label}");
            rs.merge(part);
        }
        if let Some(json) = &self.nft_json {
            if let Ok(mut part) = nft::parse(json) {
                part.tables.retain(|t| {
                    !nft::is_iptables_nft_table(t)
                        && match t.family.as_str() {
                            "ip" => !v6,
                            "ip6" => v6,
                            _ => true,
                        }
                });
                if !part.tables.is_empty() {
                    part.source = format!("nft in {label}");
                    rs.merge(part);
                }
            }
        }
        rs
    }

    /// Rule texts iptables-legacy holds (v4 and v6), to name the right tool in fixes.
    pub fn legacy_rules(&self) -> HashSet<String> {
        let mut s = rule_lines(self.iptables_legacy.as_deref());
        s.extend(rule_lines(self.ip6tables_legacy.as_deref()));
        s
    }
}

/// The packet walk's view of a namespace (addresses, routes, forwarding), from its facts.
pub fn local_facts(ns: &NsFacts) -> LocalFacts {
    let name_of = |idx: u32| {
        ns.link(idx)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{idx}"))
    };
    LocalFacts {
        addrs: ns
            .addresses
            .iter()
            .map(|a| (a.address, name_of(a.index)))
            .collect(),
        routes: ns
            .routes
            .iter()
            .filter(|r| r.kind == "unicast" || r.kind == "local")
            .filter_map(|r| {
                let dev = name_of(r.oif?);
                let net = match r.destination {
                    Some(d) => ipnet::IpNet::new(d, r.prefix_len).ok()?,
                    None if r.gateway.is_some_and(|g| g.is_ipv6()) => "::/0".parse().ok()?,
                    None => "0.0.0.0/0".parse().ok()?,
                };
                Some(RouteFact {
                    net,
                    dev,
                    src: r.prefsrc,
                })
            })
            .collect(),
        forwarding: ns.sysctl("net.ipv4.ip_forward").map(|v| v == "1"),
    }
}
