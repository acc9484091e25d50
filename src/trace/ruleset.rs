//! The rules a trace names: rule text by handle (from `nft -a list ruleset` of the traced
//! namespace), the hook of each base chain, and which engine wrote a chain.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::facts::FirewallDump;
use crate::netns::NetNs;

/// Who wrote a chain, guessed from its table and chain names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Engine {
    /// dockerd (DOCKER*, table docker-bridges).
    Docker,
    /// netavark, Podman's network backend (NETAVARK*).
    Netavark,
    /// kube-proxy (KUBE-*).
    KubeProxy,
    /// CNI plugins (CNI-*).
    Cni,
    /// A nettool lab (NETTOOL*, nettool-*, tables nettool_*).
    NettoolLab,
    /// Anything else: the machine's own rules.
    User,
}

impl Engine {
    /// A short human name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Engine::Docker => "Docker",
            Engine::Netavark => "netavark",
            Engine::KubeProxy => "kube-proxy",
            Engine::Cni => "CNI",
            Engine::NettoolLab => "nettool lab",
            Engine::User => "user",
        }
    }
}

/// The engine that owns `chain` of `table`.
pub(crate) fn engine_of(table: &str, chain: &str) -> Engine {
    let up = chain.to_ascii_uppercase();
    // DOCKER-USER is Docker's chain for the user's own rules: what is in it, the user wrote.
    // A nettool lab's NETTOOL-USER is the same.
    if up == "DOCKER-USER" || up == "NETTOOL-USER" {
        Engine::User
    } else if up.starts_with("DOCKER") || table == "docker-bridges" {
        Engine::Docker
    } else if up.starts_with("NETAVARK") || table == "netavark" {
        Engine::Netavark
    } else if up.starts_with("KUBE-") || table == "kube-proxy" {
        Engine::KubeProxy
    } else if up.starts_with("CNI-") {
        Engine::Cni
    } else if up.starts_with("NETTOOL") || table.starts_with("nettool_") {
        Engine::NettoolLab
    } else {
        Engine::User
    }
}

/// One rule as nft prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuleText {
    /// `nft -a list ruleset` text without the handle comment.
    pub text: String,
    /// True when the table is managed by iptables-nft (the rule came from an iptables command).
    pub iptables_nft: bool,
    /// The same rule as iptables-nft-save prints it (iptables-nft tables only): nft cannot
    /// always print iptables' xt matches and targets (an ip6 DNAT prints as nothing).
    pub iptables: Option<String>,
}

/// What nft says about the rule set of one namespace.
#[derive(Debug, Default, Clone)]
pub(crate) struct RuleIndex {
    /// (family, table, chain, handle) -> rule.
    pub rules: HashMap<(String, String, String, u64), RuleText>,
    /// (family, table, chain) -> hook of a base chain.
    pub hooks: HashMap<(String, String, String), String>,
    /// Tables managed by iptables-nft, (family, name).
    pub iptables_nft: Vec<(String, String)>,
    /// Rule handles of each chain in listing order (= iptables-save order).
    pub order: HashMap<(String, String, String), Vec<u64>>,
}

impl RuleIndex {
    /// The text of one rule.
    pub(crate) fn rule(
        &self,
        family: &str,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Option<&RuleText> {
        self.rules
            .get(&(family.into(), table.into(), chain.into(), handle))
    }

    /// The hook of a base chain.
    pub(crate) fn hook(&self, family: &str, table: &str, chain: &str) -> Option<&str> {
        self.hooks
            .get(&(family.into(), table.into(), chain.into()))
            .map(String::as_str)
    }
}

/// Parse `nft -a list ruleset` text. Unknown lines are skipped.
pub(crate) fn parse_listing(text: &str) -> RuleIndex {
    let mut idx = RuleIndex::default();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    let mut pending_iptables = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("table ") {
            let mut w = rest.split_whitespace();
            family = w.next().unwrap_or_default().to_string();
            table = w.next().unwrap_or_default().to_string();
            chain.clear();
            continue;
        }
        if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            continue;
        }
        if line.contains("is managed by iptables-nft") {
            // "# Warning: table ip filter is managed by iptables-nft, do not touch!"
            if let Some(rest) = line.split("table ").nth(1) {
                let mut w = rest.split_whitespace();
                if let (Some(f), Some(t)) = (w.next(), w.next()) {
                    pending_iptables.push((f.to_string(), t.to_string()));
                }
            }
            continue;
        }
        if line.starts_with("type ") && line.contains(" hook ") {
            if let Some(h) = line
                .split(" hook ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                idx.hooks.insert(
                    (family.clone(), table.clone(), chain.clone()),
                    h.to_string(),
                );
            }
            continue;
        }
        if let Some((body, handle)) = line.rsplit_once("# handle ") {
            if chain.is_empty() || line.starts_with("chain ") || line.starts_with("table ") {
                continue;
            }
            let Ok(h) = handle.trim().parse::<u64>() else {
                continue;
            };
            let text = strip_counters(body);
            idx.rules.insert(
                (family.clone(), table.clone(), chain.clone(), h),
                RuleText {
                    text,
                    iptables_nft: false,
                    iptables: None,
                },
            );
            idx.order
                .entry((family.clone(), table.clone(), chain.clone()))
                .or_default()
                .push(h);
        }
    }
    for (k, r) in idx.rules.iter_mut() {
        r.iptables_nft = pending_iptables.iter().any(|(f, t)| *f == k.0 && *t == k.1);
    }
    idx.iptables_nft = pending_iptables;
    idx
}

/// Rule text without the counter values ("counter packets 4 bytes 240" -> "counter"): they
/// change with every packet and say nothing about the rule.
fn strip_counters(body: &str) -> String {
    let words: Vec<&str> = body.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
        {
            out.push("counter");
            i += 5;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// Run `nft -a list ruleset` inside `ns` and index it; rules of iptables-nft tables also get
/// their iptables-nft-save line, from the namespace's firewall dump `fw` (read once).
pub(crate) fn load(ns: &NetNs, fw: &FirewallDump) -> Result<RuleIndex, String> {
    let out = run_nft(ns, &["-a", "list", "ruleset"], None)?;
    let mut idx = parse_listing(&out);
    for (family, saved) in [("ip", &fw.iptables_nft), ("ip6", &fw.ip6tables_nft)] {
        if !idx.iptables_nft.iter().any(|(f, _)| f == family) {
            continue;
        }
        if let Some(saved) = saved {
            add_iptables_lines(&mut idx, family, saved);
        }
    }
    Ok(idx)
}

/// Attach iptables-save lines to the rules of `family`'s iptables-nft tables, by position in
/// each chain (iptables-nft keeps one nft rule per iptables rule, in the same order).
pub(crate) fn add_iptables_lines(idx: &mut RuleIndex, family: &str, save: &str) {
    let mut table = String::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            seen.clear();
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let n = seen.entry(chain.clone()).or_insert(0);
        let key = (family.to_string(), table.clone(), chain.clone());
        if let Some(&h) = idx.order.get(&key).and_then(|v| v.get(*n)) {
            if let Some(r) = idx.rules.get_mut(&(key.0, key.1, key.2, h)) {
                r.iptables = Some(line.trim().to_string());
            }
        }
        *n += 1;
    }
}

/// Run nft with `args` (and `stdin` text) inside `ns`; Err is nft's first error line.
pub(crate) fn run_nft(ns: &NetNs, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::netns::exec::spawn(ns, cmd, &Default::default())
        .map_err(|e| format!("cannot run nft in {}: {e} (install nftables)", ns.label()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("nft stdin in {}: {e}", ns.label()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft in {}: {e}", ns.label()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "nft {} in {} failed: {}",
            args.join(" "),
            ns.label(),
            err.lines()
                .find(|l| l.contains("Error"))
                .unwrap_or_else(|| err.lines().next().unwrap_or(""))
        ));
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    // nft says which tables iptables-nft manages on stderr ("# Warning: table ip nat is
    // managed by iptables-nft, do not touch!"): keep those lines with the listing.
    for w in String::from_utf8_lossy(&out.stderr)
        .split("# Warning:")
        .skip(1)
        .filter(|w| w.contains("managed by iptables-nft"))
    {
        text.push_str("\n# Warning:");
        text.push_str(w.lines().next().unwrap_or(""));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"table inet user { # handle 2
	chain input { # handle 1
		type filter hook input priority filter; policy accept;
		tcp dport 9999 counter packets 1 bytes 60 drop # handle 2
	}
}
table ip filter { # handle 3
	chain INPUT { # handle 1
		type filter hook input priority filter; policy accept;
		meta l4proto tcp fib daddr type local tcp dport 9998  counter packets 0 bytes 0 drop # handle 2
	}
	chain DOCKER-USER { # handle 4
		jump DOCKER # handle 5
	}
}
# Warning: table ip filter is managed by iptables-nft, do not touch!
"#;

    #[test]
    fn rules_by_handle_with_hooks_and_iptables_nft_tables() {
        let idx = parse_listing(LISTING);
        let r = idx.rule("inet", "user", "input", 2).unwrap();
        assert_eq!(r.text, "tcp dport 9999 counter drop");
        assert!(!r.iptables_nft);
        let r = idx.rule("ip", "filter", "INPUT", 2).unwrap();
        assert!(r.iptables_nft);
        assert!(r.text.starts_with("meta l4proto tcp fib daddr type local"));
        assert_eq!(
            idx.rule("ip", "filter", "DOCKER-USER", 5).unwrap().text,
            "jump DOCKER"
        );
        assert_eq!(idx.hook("inet", "user", "input"), Some("input"));
        assert_eq!(idx.hook("ip", "filter", "DOCKER-USER"), None);
    }

    #[test]
    fn iptables_lines_by_position() {
        let mut idx = parse_listing(LISTING);
        add_iptables_lines(
            &mut idx,
            "ip",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 9998 -j DROP\n-A DOCKER-USER -j DOCKER\nCOMMIT\n",
        );
        assert_eq!(
            idx.rule("ip", "filter", "DOCKER-USER", 5)
                .unwrap()
                .iptables
                .as_deref(),
            Some("-A DOCKER-USER -j DOCKER")
        );
        assert!(idx
            .rule("ip", "filter", "INPUT", 2)
            .unwrap()
            .iptables
            .as_deref()
            .unwrap()
            .contains("--dport 9998"));
        assert!(idx
            .rule("inet", "user", "input", 2)
            .unwrap()
            .iptables
            .is_none());
    }

    #[test]
    fn engines_by_chain_name() {
        assert_eq!(engine_of("filter", "DOCKER-USER"), Engine::User);
        assert_eq!(engine_of("nat", "DOCKER"), Engine::Docker);
        assert_eq!(engine_of("nat", "NETAVARK-HOSTPORT-DNAT"), Engine::Netavark);
        assert_eq!(engine_of("nat", "KUBE-SERVICES"), Engine::KubeProxy);
        assert_eq!(engine_of("nat", "CNI-HOSTPORT-DNAT"), Engine::Cni);
        assert_eq!(engine_of("nettool_lab1", "forward"), Engine::NettoolLab);
        // The lab's user chain is the user's, as DOCKER-USER is (docs/setup.md: "yours").
        assert_eq!(engine_of("filter", "NETTOOL-USER"), Engine::User);
        assert_eq!(engine_of("filter", "INPUT"), Engine::User);
        assert_eq!(
            engine_of("docker-bridges", "filter-forward"),
            Engine::Docker
        );
    }
}
