//! Words: conditions, actions and marks as plain text, and a published port's one sentence.

use super::super::model::*;
use super::super::reach::{self, Probe};
use super::super::walk::RuleRef;
use super::{PublishedPort, Target};

/// Plain-word description of one condition.
pub fn describe_match(m: &Match) -> String {
    let not = if m.negated { "not " } else { "" };
    match &m.cond {
        Cond::Proto { proto } => format!("{not}{proto}"),
        Cond::Addr { dir, net } => format!("{not}{} {}", dir_word(*dir), net_str(net)),
        Cond::AddrRange { dir, from, to } => {
            format!("{} {not}in {from}-{to}", dir_word(*dir))
        }
        Cond::InIface { name } => {
            format!("{}arriving on {name}", if m.negated { "not " } else { "" })
        }
        Cond::OutIface { name } => {
            format!("{}leaving by {name}", if m.negated { "not " } else { "" })
        }
        Cond::Port { dir, ports } => format!(
            "{} port {not}{}",
            if *dir == Dir::Src {
                "source"
            } else {
                "destination"
            },
            ports_str(ports)
        ),
        Cond::CtState { states } => format!("connection state {not}{}", states.join("/")),
        Cond::AddrType { dir, types } => format!(
            "{} {}a {} address",
            dir_word(*dir),
            if m.negated { "not " } else { "" },
            types.join("/").to_ascii_lowercase()
        ),
        Cond::Mark { value, mask } => {
            if *mask == u32::MAX {
                format!("mark {not}{value:#x}")
            } else {
                format!(
                    "mark & {mask:#x} {}= {value:#x}",
                    if m.negated { "!" } else { "=" }
                )
            }
        }
        Cond::Set { name, dirs } => format!(
            "{} {not}in ipset {name} (an iptables dump does not carry the set's members, so this cannot be evaluated: see `ipset list {name}`)",
            dirs.iter()
                .map(|d| dir_word(*d))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Cond::NftSet {
            name,
            fields,
            elements,
            texts,
        } => {
            let key = fields
                .iter()
                .map(|f| field_word(*f))
                .collect::<Vec<_>>()
                .join(" . ");
            let set = if name.is_empty() {
                String::new()
            } else {
                format!("set @{name} ")
            };
            if elements.is_none() && !name.is_empty() && texts.is_empty() {
                return format!(
                    "{key} {not}in set @{name} (the set is not in this dump, so this cannot be evaluated: read the whole `nft list ruleset`)"
                );
            }
            if elements.is_none() {
                return format!(
                    "{key} {not}in {set}{{{}}} (an element was not understood, so this cannot be evaluated)",
                    texts.join(", ")
                );
            }
            const SHOWN: usize = 4;
            let mut shown: Vec<String> = texts.iter().take(SHOWN).cloned().collect();
            if texts.len() > SHOWN {
                shown.push(format!("{} more", texts.len() - SHOWN));
            }
            format!("{key} {not}in {set}{{{}}}", shown.join(", "))
        }
        Cond::Probability { p } => format!("with probability {p:.4}"),
        Cond::Nth { every, packet } => format!("every {every}th packet (offset {packet})"),
        Cond::Unknown { text } => format!("{not}{text} (unknown: may or may not match)"),
    }
}

/// Plain-word description of what a rule does (`--rules`), never Rust debug text.
pub(crate) fn describe_action(a: &Action) -> String {
    let ports = |p: &Option<PortRange>| p.map(|p| format!(", ports {p}")).unwrap_or_default();
    match a {
        Action::None => "no target: only counts the packet".into(),
        Action::Accept => "ACCEPT".into(),
        Action::Drop => "DROP".into(),
        Action::Reject { with } => match with {
            Some(w) => format!("REJECT (answering {w})"),
            None => "REJECT".into(),
        },
        Action::Return => "RETURN to the calling chain".into(),
        Action::Jump { chain } => format!("jump to {chain}"),
        Action::Goto { chain } => format!("go to {chain} (no return here)"),
        Action::Dnat { to } => format!("DNAT: destination becomes {}", to.text),
        Action::Snat { to } => format!("SNAT: source becomes {}", to.text),
        Action::Masquerade { ports: p } => format!(
            "MASQUERADE: source becomes the outgoing interface's address{}",
            ports(p)
        ),
        Action::Redirect { ports: p } => format!(
            "REDIRECT: destination becomes this host (the incoming interface's address){}",
            ports(p)
        ),
        Action::Mark { value, mask } => describe_mark(*value, *mask),
        Action::Log { prefix } => match prefix {
            Some(p) => format!("LOG with prefix \"{p}\", then go on"),
            None => "LOG, then go on".into(),
        },
        Action::Vmap { key, entries, .. } => {
            let k = match key {
                VmapKey::InIface => "the incoming interface",
                VmapKey::OutIface => "the outgoing interface",
                VmapKey::Random => "a random number (load balancing)",
                VmapKey::Concat => "several packet fields",
                VmapKey::Other => "a key nettool cannot evaluate",
            };
            let list: Vec<String> = entries
                .iter()
                .map(|(n, v)| format!("{n}: {}", describe_action(v)))
                .collect();
            format!("verdict map on {k}: {}", list.join("; "))
        }
        Action::Other { text, terminal } => format!(
            "{text} (not modelled{})",
            if *terminal { "; ends evaluation" } else { "" }
        ),
    }
}

/// MARK in words: mark = (mark & ~mask) ^ value, named after the option that wrote it.
fn describe_mark(value: u32, mask: u32) -> String {
    if mask == 0 {
        format!("MARK: flip bits {value:#x} of the mark (XOR, --xor-mark), then go on")
    } else if mask == u32::MAX {
        format!("MARK: set the mark to {value:#x}, then go on")
    } else if value == mask {
        format!("MARK: set bits {value:#x} of the mark (OR, --or-mark), then go on")
    } else if value == 0 {
        format!(
            "MARK: clear bits {mask:#x} of the mark (AND, --and-mark {:#x}), then go on",
            !mask
        )
    } else {
        format!(
            "MARK: mark = (mark & ~{mask:#x}) ^ {value:#x} (--set-xmark {value:#x}/{mask:#x}), then go on"
        )
    }
}

/// A set key's field in words.
fn field_word(f: KeyField) -> &'static str {
    match f {
        KeyField::SrcAddr => "source",
        KeyField::DstAddr => "destination",
        KeyField::L4Proto => "protocol",
        KeyField::SrcPort => "source port",
        KeyField::DstPort => "destination port",
        KeyField::InIface => "incoming interface",
        KeyField::OutIface => "outgoing interface",
    }
}

fn dir_word(d: Dir) -> &'static str {
    match d {
        Dir::Src => "source",
        Dir::Dst => "destination",
    }
}

pub(super) fn net_str(n: &ipnet::IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// "80", "80-90", "80,443".
pub fn ports_str(p: &[PortRange]) -> String {
    p.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn title_proto(p: &str) -> String {
    match p {
        "any" => "Any protocol".into(),
        p => p.to_ascii_uppercase(),
    }
}

fn pct(share: f64) -> String {
    let v = share * 100.0;
    if (v - v.round()).abs() < 0.05 {
        format!("{:.0}%", v)
    } else {
        format!("{:.1}%", v)
    }
}

pub(super) fn sentence(p: &PublishedPort) -> String {
    let port = if p.host_port == "any" {
        String::new()
    } else {
        format!(" port {}", p.host_port)
    };
    let live: Vec<&Target> = p.targets.iter().filter(|t| !t.shadowed).collect();
    let balanced = live.len() > 1 && live.iter().any(|t| t.share < 0.999);
    let mut targets: Vec<String> = Vec::new();
    for t in &live {
        let mut s = t.to.clone();
        if let Some(n) = &t.name {
            s.push_str(&format!(" ({n})"));
        }
        if balanced || t.share < 0.999 {
            s.push_str(&format!(" ({})", pct(t.share)));
        }
        targets.push(s);
    }
    let mut s = format!("{} to {}{}", title_proto(&p.proto), p.host, port);
    if targets.is_empty() {
        s.push_str(" is meant to be translated");
    } else if balanced {
        s.push_str(&format!(" is balanced over {}", targets.join(", ")));
    } else if targets.len() > 1 {
        s.push_str(&format!(
            " is sent to {} (which one depends on where it comes from)",
            targets.join(" or ")
        ));
    } else {
        s.push_str(&format!(" is sent to {}", targets[0]));
    }
    let refs: Vec<RuleRef> = p.targets.iter().map(target_ref).collect();
    let (ok, not): (Vec<&Probe>, Vec<&Probe>) = p.probes.iter().partition(|pr| {
        refs.iter().any(|r| {
            reach::reaches(pr, r) && !matches!(pr.verdict.as_str(), "dropped" | "rejected")
        })
    });
    if !ok.is_empty() {
        let mut who: Vec<String> = ok.iter().map(|pr| from_short(pr)).collect();
        who.dedup();
        s.push_str(&format!(": reached {}", who.join(", ")));
    } else if !p.probes.is_empty() {
        s.push_str(": no walked packet gets through");
    }
    let mut nots: Vec<String> = Vec::new();
    for pr in &not {
        let why = match &pr.dnat_by {
            Some(r) if refs.contains(r) => format!("translated, then {}", why_not(pr)),
            _ => why_not(pr),
        };
        let w = format!("{} ({why})", from_short(pr));
        if !nots.contains(&w) {
            nots.push(w);
        }
    }
    if !nots.is_empty() {
        s.push_str(&format!("; not {}", nots.join(", not ")));
    }
    for t in p.targets.iter().filter(|t| t.shadowed) {
        match &t.shadowed_by {
            Some(r) => s.push_str(&format!(
                "; {} [{}] is shadowed: {r} takes every walked packet first",
                t.to,
                target_ref(t)
            )),
            None => s.push_str(&format!(
                "; {} [{}] is never applied: every walked packet is dropped or left untranslated before it",
                t.to,
                target_ref(t)
            )),
        }
    }
    let unknown: Vec<&String> = p
        .entries
        .iter()
        .flat_map(|e| &e.conditions)
        .filter(|c| c.contains("(unknown: may or may not match)"))
        .collect();
    if let Some(u) = unknown.first() {
        s.push_str(&format!(
            "; only if {}",
            u.replace(
                " (unknown: may or may not match)",
                ", which nettool cannot evaluate"
            )
        ));
    }
    s.push('.');
    s
}

/// The rule a target's DNAT is.
pub(super) fn target_ref(t: &Target) -> RuleRef {
    RuleRef {
        table: t.table.clone(),
        chain: t.chain.clone(),
        line: t.line,
    }
}

/// Short name of where a probe comes from, for the one-sentence summary.
fn from_short(p: &Probe) -> String {
    match &p.from {
        reach::From::Outside => "from outside".into(),
        reach::From::Container { iface } => format!("from containers on {iface}"),
        reach::From::ThisHost => format!("from this host to {}", p.packet.dst),
        reach::From::AsTheRuleSays => format!(
            "from {}{}",
            p.packet.src,
            p.packet
                .in_iface
                .as_deref()
                .map(|i| format!(" on {i}"))
                .unwrap_or_default()
        ),
    }
}

/// Why a probe did not reach the port, in a few words.
pub(super) fn why_not(p: &Probe) -> String {
    match (&p.dnat_by, p.verdict.as_str(), &p.decided_by) {
        (Some(r), _, _) => format!("sent elsewhere by {r}"),
        (None, "dropped" | "rejected", Some(d)) => format!("{} by {d}", p.verdict),
        (None, "accepted-local", _) => "not translated: delivered to this host".into(),
        (None, "no-route", _) => p.summary.clone(),
        (None, _, _) => "not translated".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(negated: bool, cond: Cond) -> Match {
        Match { negated, cond }
    }

    #[test]
    fn conditions_and_marks_in_words() {
        let port = Cond::Port {
            dir: Dir::Dst,
            ports: vec![
                PortRange { from: 80, to: 90 },
                PortRange { from: 443, to: 443 },
            ],
        };
        assert_eq!(
            describe_match(&m(false, port.clone())),
            "destination port 80-90,443"
        );
        assert_eq!(
            describe_match(&m(true, port)),
            "destination port not 80-90,443"
        );
        let iface = Cond::InIface {
            name: "docker0".into(),
        };
        assert_eq!(describe_match(&m(true, iface)), "not arriving on docker0");
        assert_eq!(
            describe_mark(0x4000, 0x4000),
            "MARK: set bits 0x4000 of the mark (OR, --or-mark), then go on"
        );
        assert_eq!(
            describe_action(&Action::Goto { chain: "X".into() }),
            "go to X (no return here)"
        );
        assert_eq!(pct(1.0 / 3.0), "33.3%");
        assert_eq!(title_proto("any"), "Any protocol");
    }
}
