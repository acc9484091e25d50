//! nftables loaders: `nft -j list ruleset` JSON (json.rs) and `nft list ruleset` text (text.rs),
//! sharing the rule builder, the chain types and the priority names.

mod json;
mod text;

pub use json::parse;
pub use text::parse_text;

use super::model::*;

/// Tables iptables-nft keeps in nftables (read through iptables-nft-save instead).
pub fn is_iptables_nft_table(t: &Table) -> bool {
    matches!(t.family.as_str(), "ip" | "ip6")
        && matches!(
            t.name.as_str(),
            "filter" | "nat" | "mangle" | "raw" | "security"
        )
}

/// Priority names nft accepts (for the families we care about).
pub fn priority_value(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    // "dstnat - 5", "filter + 10"
    let (name, delta) = match s.find(['+', '-']) {
        Some(i) if i > 0 => {
            let d: i32 = s[i + 1..].trim().parse().ok()?;
            (s[..i].trim(), if &s[i..=i] == "-" { -d } else { d })
        }
        _ => (s, 0),
    };
    let base = match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        _ => return None,
    };
    Some(base + delta)
}

fn chain_type(s: &str) -> ChainType {
    match s {
        "nat" => ChainType::Nat,
        "route" => ChainType::Route,
        _ => ChainType::Filter,
    }
}

#[derive(Default)]
struct RuleBuilder {
    /// Names of iptables-nft compat (xt) expressions met.
    xt: Vec<String>,
    /// The counter expression's [packets, bytes].
    counters: Option<[u64; 2]>,
    matches: Vec<Match>,
    terminal: Option<Action>,
    nat: Option<Action>,
    other: Option<Action>,
}

impl RuleBuilder {
    fn push(&mut self, negated: bool, cond: Cond) {
        self.matches.push(Match { negated, cond });
    }

    fn finish(self, line: usize, text: String, comment: Option<String>) -> Rule {
        let action = self
            .terminal
            .or(self.nat)
            .or(self.other)
            .unwrap_or(Action::None);
        Rule {
            line,
            text,
            matches: self.matches,
            action,
            comment,
            counters: self.counters,
        }
    }
}
