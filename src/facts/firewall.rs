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
pub(crate) struct FirewallDump {
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
    /// Plain `iptables-save`, read only when neither backend's own tool ran (old systems).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_plain: Option<String>,
    /// Why a tool gave nothing.
    pub errors: Vec<String>,
}

/// Run a tool inside `ns`; its stdout, or why not.
pub(crate) fn capture(ns: &NetNs, argv: &[&str]) -> Result<String, String> {
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

/// Dump every firewall of `ns`, the five tools in parallel (no rule counters).
pub(crate) fn dump(ns: &NetNs) -> FirewallDump {
    dump_with(ns, false)
}

/// Dump every firewall of `ns`; `counters` asks the iptables tools for each rule's packet and
/// byte counters (`-c`: explain-nat shows which rules traffic hits; doctor quotes rules bare).
pub(crate) fn dump_with(ns: &NetNs, counters: bool) -> FirewallDump {
    let c: &[&str] = if counters { &["-c"] } else { &[] };
    let save = |tool: &'static str| -> Vec<&str> {
        std::iter::once(tool).chain(c.iter().copied()).collect()
    };
    let tools: [Vec<&str>; 5] = [
        save("iptables-nft-save"),
        save("iptables-legacy-save"),
        save("ip6tables-nft-save"),
        save("ip6tables-legacy-save"),
        vec!["nft", "-j", "list", "ruleset"],
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
    // Old systems have only plain iptables-save.
    let plain = if v4_nft.is_none() && legacy.is_none() {
        take(capture(ns, &save("iptables-save")))
    } else {
        None
    };
    d.iptables_nft = v4_nft;
    d.iptables_legacy = legacy;
    d.ip6tables_nft = ip6_nft;
    d.ip6tables_legacy = ip6_legacy;
    d.nft_json = nft_json;
    d.iptables_plain = plain;
    d
}

/// Dump the firewalls of several namespaces, a few at a time (each one's tools in parallel).
pub(crate) fn dump_each(nss: &[&NetNs]) -> Vec<FirewallDump> {
    crate::netns::peers::parallel_map(nss.len(), |i| dump(nss[i]))
}

/// True when an iptables-save text holds at least one rule.
pub(crate) fn has_rules(text: &str) -> bool {
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

/// Which families a rule set is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Families {
    V4,
    V6,
    Both,
}

impl FirewallDump {
    /// The rule set of one family (false: IPv4): both iptables backends, and native nft tables
    /// of that family and of the families that see both (inet, bridge, netdev...).
    pub(crate) fn ruleset(&self, v6: bool, label: &str) -> Ruleset {
        self.build(if v6 { Families::V6 } else { Families::V4 }, label)
    }

    /// Every rule of the namespace, IPv4 and IPv6 together, as explain-nat shows it; Err with
    /// what each tool said when none of them ran at all.
    pub(crate) fn ruleset_all(&self, label: &str) -> Result<Ruleset, String> {
        let any = self.iptables_nft.is_some()
            || self.iptables_legacy.is_some()
            || self.iptables_plain.is_some()
            || self.ip6tables_nft.is_some()
            || self.ip6tables_legacy.is_some()
            || self.nft_json.is_some();
        if !any {
            return Err(self.errors.join("; "));
        }
        let mut rs = self.build(Families::Both, label);
        rs.source = format!("namespace {label}");
        Ok(rs)
    }

    /// The one way the dumps become a rule set. Per family: a backend whose dump holds no rule
    /// is left out when the other backend holds some (its empty built-in tables would only
    /// repeat policies); both holding rules is the split-backend trap, said in a warning. nft:
    /// the tables iptables-nft writes are skipped (they came whole from iptables-nft-save),
    /// with their compat-expression warnings.
    fn build(&self, fams: Families, label: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        let mut parts: Vec<(&str, &Option<String>, &Option<String>, &'static str)> = Vec::new();
        if fams != Families::V6 {
            let nft = if self.iptables_nft.is_none() && self.iptables_legacy.is_none() {
                &self.iptables_plain
            } else {
                &self.iptables_nft
            };
            parts.push(("iptables", nft, &self.iptables_legacy, "ip"));
        }
        if fams != Families::V4 {
            parts.push((
                "ip6tables",
                &self.ip6tables_nft,
                &self.ip6tables_legacy,
                "ip6",
            ));
        }
        for (tool, nft_text, legacy_text, family) in parts {
            let nft_has = nft_text.as_deref().is_some_and(has_rules);
            let legacy_has = legacy_text.as_deref().is_some_and(has_rules);
            if nft_has && legacy_has {
                rs.warnings.push(format!(
                    "{tool} rules are split between {tool}-nft and {tool}-legacy: both sets run, in separate tables; \
                     tools that use one backend do not see the other's rules (check which `{tool}` your software calls)"
                ));
            }
            let plain =
                self.iptables_nft.is_none() && self.iptables_legacy.is_none() && family == "ip";
            for (backend, text, has, other_has) in [
                ("nft", nft_text, nft_has, legacy_has),
                ("legacy", legacy_text, legacy_has, nft_has),
            ] {
                let Some(t) = text else { continue };
                if !has && other_has {
                    continue;
                }
                // Both families in one set (explain-nat): ip6tables only when it holds rules.
                // Its empty built-in chains would be summarised with no family named (an
                // ip6 `policy DROP at FORWARD` reads as IPv4's); doctor judges per family.
                if fams == Families::Both && family == "ip6" && !has {
                    continue;
                }
                let name = if plain {
                    tool.to_string()
                } else {
                    format!("{tool}-{backend}")
                };
                let mut part = iptables::parse_save_family(t, family);
                part.source = format!("{name}-save in {label}");
                for p in &mut part.problems {
                    p.message = format!("{name}-save line {}: {}", p.line, p.message);
                }
                rs.merge(part);
            }
        }
        if let Some(json) = &self.nft_json {
            match nft::parse(json) {
                Ok(mut part) => {
                    let skipped: Vec<String> = part
                        .tables
                        .iter()
                        .filter(|t| nft::is_iptables_nft_table(t))
                        .map(|t| {
                            format!("table {} {} was written by iptables-nft", t.family, t.name)
                        })
                        .collect();
                    part.tables.retain(|t| {
                        !nft::is_iptables_nft_table(t)
                            && match t.family.as_str() {
                                "ip" => fams != Families::V6,
                                "ip6" => fams != Families::V4,
                                _ => true,
                            }
                    });
                    part.warnings
                        .retain(|w| !skipped.iter().any(|s| w.starts_with(s.as_str())));
                    if !part.tables.is_empty() || !part.warnings.is_empty() {
                        part.source = format!("nft in {label}");
                        rs.merge(part);
                    }
                }
                Err(e) => rs.warnings.push(format!("nft -j list ruleset: {e}")),
            }
        }
        rs
    }

    /// The tables legacy iptables holds rules in ("ip filter (legacy)"): x_tables, which
    /// nf_tables tracing cannot see.
    pub(crate) fn legacy_tables(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (fam, text) in [
            ("ip", &self.iptables_legacy),
            ("ip6", &self.ip6tables_legacy),
        ] {
            let mut table = "";
            for l in text.as_deref().unwrap_or_default().lines() {
                if let Some(t) = l.strip_prefix('*') {
                    table = t.trim();
                } else if has_rules(l) {
                    let name = format!("{fam} {table} (legacy)");
                    if !found.contains(&name) {
                        found.push(name);
                    }
                }
            }
        }
        found
    }

    /// Rule texts iptables-legacy holds (v4 and v6), to name the right tool in fixes.
    pub(crate) fn legacy_rules(&self) -> HashSet<String> {
        let mut s = rule_lines(self.iptables_legacy.as_deref());
        s.extend(rule_lines(self.ip6tables_legacy.as_deref()));
        s
    }
}

/// The packet walk's view of a namespace (addresses, routes, forwarding), from its facts.
pub(crate) fn local_facts(ns: &NsFacts) -> LocalFacts {
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

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n-A DOCKER -p tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\nCOMMIT\n";
    const V4_LEGACY: &str =
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j ACCEPT\n-A FORWARD -s\nCOMMIT\n";
    const V6: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination [fd00::2]:80\nCOMMIT\n";
    const V6_EMPTY: &str = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
    const NFT: &str = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "ip", "name": "nat", "handle": 1}},
        {"table": {"family": "inet", "name": "lab", "handle": 2}},
        {"table": {"family": "ip6", "name": "mine", "handle": 3}}]}"#;

    fn tables(rs: &Ruleset) -> Vec<String> {
        let mut v: Vec<String> = rs
            .tables
            .iter()
            .map(|t| format!("{} {}", t.family, t.name))
            .collect();
        v.sort();
        v
    }

    /// Doctor (per family) and explain-nat (both) get their rules from one builder: the same
    /// split-backend warning, tool-named problems and nft tables, each table once.
    #[test]
    fn one_builder_for_each_family_and_for_both() {
        let d = FirewallDump {
            iptables_nft: Some(V4.into()),
            iptables_legacy: Some(V4_LEGACY.into()),
            ip6tables_nft: Some(V6.into()),
            nft_json: Some(NFT.into()),
            ..Default::default()
        };
        let v4 = d.ruleset(false, "host");
        assert!(
            v4.warnings
                .iter()
                .any(|w| w.contains("split between iptables-nft and iptables-legacy")),
            "{:?}",
            v4.warnings
        );
        assert!(
            v4.problems
                .iter()
                .any(|p| p.message.starts_with("iptables-legacy-save line 4:")),
            "{:?}",
            v4.problems
        );
        // iptables-nft's own `ip nat` table came from iptables-nft-save, not again from nft.
        assert_eq!(tables(&v4), ["inet lab", "ip filter", "ip nat"]);
        let v6 = d.ruleset(true, "host");
        assert_eq!(tables(&v6), ["inet lab", "ip6 mine", "ip6 nat"]);
        let all = d.ruleset_all("host").unwrap();
        assert_eq!(
            tables(&all),
            ["inet lab", "ip filter", "ip nat", "ip6 mine", "ip6 nat"]
        );
        assert_eq!(all.source, "namespace host");
        assert_eq!(all.warnings.len(), 1, "{:?}", all.warnings);
    }

    /// explain-nat leaves an ip6tables dump without rules out; doctor's IPv6 set keeps its
    /// policies (a FORWARD DROP with no rule still drops).
    #[test]
    fn empty_ip6tables_counts_for_doctor_not_for_the_summary() {
        let d = FirewallDump {
            iptables_nft: Some(V4.into()),
            ip6tables_nft: Some(V6_EMPTY.into()),
            ..Default::default()
        };
        assert_eq!(tables(&d.ruleset(true, "h")), ["ip6 filter"]);
        assert_eq!(tables(&d.ruleset_all("h").unwrap()), ["ip nat"]);
    }

    /// The legacy tables that hold rules, per family, each once (trace says nf_tables tracing
    /// cannot see them); a dump with only built-in chains holds none.
    #[test]
    fn legacy_tables_with_rules_are_named_once() {
        let d = FirewallDump {
            iptables_legacy: Some(format!(
                "{V4_LEGACY}*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
            )),
            ip6tables_legacy: Some(
                "*raw\n:PREROUTING ACCEPT [0:0]\n[3:180] -A PREROUTING -j ACCEPT\nCOMMIT\n".into(),
            ),
            iptables_nft: Some(V4.into()),
            ..Default::default()
        };
        assert_eq!(
            d.legacy_tables(),
            ["ip filter (legacy)", "ip6 raw (legacy)"]
        );
        assert!(FirewallDump::default().legacy_tables().is_empty());
    }

    /// Old systems: plain iptables-save is read and named; nothing at all is an error that
    /// carries what each tool said.
    #[test]
    fn plain_iptables_save_and_no_tools() {
        let d = FirewallDump {
            iptables_plain: Some(V4_LEGACY.into()),
            ..Default::default()
        };
        let rs = d.ruleset_all("h").unwrap();
        assert_eq!(tables(&rs), ["ip filter"]);
        assert!(rs.problems[0].message.starts_with("iptables-save line 4:"));
        let none = FirewallDump {
            errors: vec![
                "iptables-nft-save: not found".into(),
                "nft: not found".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            none.ruleset_all("h").unwrap_err(),
            "iptables-nft-save: not found; nft: not found"
        );
    }
}
