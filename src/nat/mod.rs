//! NAT and filter rules: load them (iptables-save, iptables -S, nft JSON or text, or live from a
//! namespace), explain them in plain words, and walk a packet through them.

pub mod explain;
pub mod iptables;
mod loops;
pub mod model;
pub mod nft;
pub mod reach;
pub mod synth;
pub mod walk;

pub use model::Ruleset;

/// Errors loading rules.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// None of iptables-nft-save, iptables-legacy-save, iptables-save, nft could run.
    #[error("no rules could be read in namespace {ns}: {why} (install the iptables and nftables packages)")]
    NoTools {
        /// The namespace label.
        ns: String,
        /// What each tool said.
        why: String,
    },
    /// nft JSON that is not JSON at all.
    #[error("{0}")]
    BadJson(String),
}

/// The input formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// iptables-save output.
    IptablesSave,
    /// iptables -S output (one table).
    IptablesS,
    /// nft -j list ruleset.
    NftJson,
    /// nft list ruleset.
    NftText,
}

/// Guess the format of `text`.
pub fn detect(text: &str) -> Format {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with('{') || first.starts_with('[') {
        Format::NftJson
    } else if first.starts_with("table ") || first.starts_with("flush ") {
        Format::NftText
    } else if text.lines().any(|l| l.trim_start().starts_with('*')) {
        Format::IptablesSave
    } else {
        Format::IptablesS
    }
}

/// Parse rules in any supported format; `table` names the table of an `iptables -S` listing.
/// Broken input is named: an empty input, a last line cut short, a guessed table.
pub fn parse_text(text: &str, table: Option<&str>, source: &str) -> Result<Ruleset, NatError> {
    if text.trim().is_empty() {
        return Ok(Ruleset {
            source: source.to_string(),
            problems: vec![model::Problem {
                line: 0,
                message: "the input is empty: no rules at all to explain (an empty dump, a command that failed, or the wrong file); this is not the same as 'no NAT'".into(),
            }],
            ..Default::default()
        });
    }
    let format = detect(text);
    // A dump cut mid-line: its last line has no end of line. Not read as a rule (a half rule
    // would say something the real one does not).
    let mut cut = None;
    let mut body = text;
    if format != Format::NftJson && !text.ends_with('\n') {
        let start = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let last = text[start..].trim();
        if !last.is_empty() && last != "COMMIT" && last != "}" && !last.starts_with('#') {
            let no = text.lines().count();
            cut = Some(model::Problem {
                line: no,
                message: format!(
                    "line {no} ends without a newline: the dump was cut in the middle of '{}'; that line is not read (take the dump again)",
                    if last.chars().count() > 60 {
                        format!("{}...", last.chars().take(60).collect::<String>())
                    } else {
                        last.to_string()
                    }
                ),
            });
            body = &text[..start];
        }
    }
    let mut rs = match format {
        Format::NftJson => nft::parse(body)?,
        Format::NftText => nft::parse_text(body),
        Format::IptablesSave => iptables::parse_save(body),
        Format::IptablesS => match table {
            Some(t) => iptables::parse_rules(body, t),
            None => {
                let (t, why) = iptables::guess_table_why(body);
                let mut rs = iptables::parse_rules(body, t);
                rs.warnings.push(format!(
                    "an `iptables -S` listing does not name its table: guessed '{t}' ({why}); pass --table TABLE if that is wrong"
                ));
                rs
            }
        },
    };
    if let Some(p) = cut {
        rs.problems.push(p);
    }
    if matches!(format, Format::IptablesSave | Format::IptablesS) {
        assume_kube_jumps(&mut rs);
    }
    // Only a file can hold a jump loop (the kernel refuses one): name it.
    let loops = loops::find(&rs);
    rs.problems.extend(loops);
    if rs.tables.is_empty() && rs.problems.is_empty() {
        rs.warnings.push(
            "no table was found in the input: nothing here is a rule (is this a rule dump?)".into(),
        );
    }
    rs.source = source.to_string();
    Ok(rs)
}

/// kube-proxy's own rules (`iptables-restore` input, a test's expected dump) have its chains
/// but no built-in chain jumping into them: add the jumps kube-proxy installs, and say so.
pub(crate) fn assume_kube_jumps(rs: &mut Ruleset) {
    use model::{Action, Match, Rule};
    // (table, built-in chain, kube chain, conditions as iptables words)
    let jumps: [(&str, &str, &str); 9] = [
        ("nat", "PREROUTING", "KUBE-SERVICES"),
        ("nat", "OUTPUT", "KUBE-SERVICES"),
        ("nat", "POSTROUTING", "KUBE-POSTROUTING"),
        ("filter", "INPUT", "KUBE-PROXY-FIREWALL"),
        ("filter", "INPUT", "KUBE-NODEPORTS"),
        ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES"),
        ("filter", "INPUT", "KUBE-FIREWALL"),
        ("filter", "FORWARD", "KUBE-FORWARD"),
        ("filter", "FORWARD", "KUBE-SERVICES"),
    ];
    let extra: [(&str, &str, &str); 4] = [
        ("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES"),
        ("filter", "FORWARD", "KUBE-PROXY-FIREWALL"),
        ("filter", "OUTPUT", "KUBE-SERVICES"),
        ("filter", "OUTPUT", "KUBE-FIREWALL"),
    ];
    let mut added = Vec::new();
    for t in &mut rs.tables {
        let jumped_into = |t: &model::Table, name: &str| {
            t.chains
                .iter()
                .flat_map(|c| &c.rules)
                .any(|r| r.action.target_chain() == Some(name))
        };
        let has_kube = t.chains.iter().any(|c| c.name.starts_with("KUBE-"));
        if !has_kube
            || t.chains.iter().any(|c| {
                c.base.is_some()
                    && c.rules.iter().any(|r| {
                        r.action
                            .target_chain()
                            .is_some_and(|x| x.starts_with("KUBE-"))
                    })
            })
        {
            continue;
        }
        for (table, base, kube) in jumps.iter().chain(extra.iter()) {
            if t.name != *table
                || t.chain(kube).is_none()
                || jumped_into(t, kube) && *kube != "KUBE-SERVICES"
            {
                continue;
            }
            let Some(&bi) = t.index.get(*base) else {
                continue;
            };
            // New connections only into the filter side, as kube-proxy does (ctstate NEW).
            let matches: Vec<Match> =
                if *table == "filter" && *kube != "KUBE-FIREWALL" && *kube != "KUBE-FORWARD" {
                    vec![Match {
                        negated: false,
                        cond: model::Cond::CtState {
                            states: vec!["NEW".into()],
                        },
                    }]
                } else {
                    Vec::new()
                };
            t.chains[bi].rules.push(Rule {
                line: 0,
                text: format!("-A {base} -j {kube} (assumed: kube-proxy's jump, not in the input)"),
                matches,
                action: Action::Jump {
                    chain: kube.to_string(),
                },
                comment: Some("assumed kube-proxy jump".into()),
                counters: None,
            });
            added.push(format!("{table} {base} -> {kube}"));
        }
    }
    if !added.is_empty() {
        rs.warnings.push(format!(
            "kube-proxy chains with nothing jumping into them (kube-proxy's own rules, without the built-in chains): assuming kube-proxy's usual jumps {}; on a real host check they exist (`iptables -t nat -S PREROUTING`)",
            added.join(", ")
        ));
    }
}

/// Read and parse a file (see [`parse_text`]).
pub fn load_file(path: &str, table: Option<&str>) -> Result<Ruleset, NatError> {
    let text = std::fs::read_to_string(path).map_err(|source| NatError::Read {
        path: path.to_string(),
        source,
    })?;
    parse_text(&text, table, path)
}

/// One fuzz input through every loader, the summary (with its walks) and two walks: the body of
/// `fuzz/fuzz_targets/parse_rules.rs`, here so a stable `cargo test` can replay inputs too.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sets = [
        parse_text(text, None, "fuzz").ok(),
        Some(iptables::parse(text)),
        Some(iptables::parse_rules(text, "nat")),
        Some(iptables::parse_save_family(text, "ip6")),
        nft::parse(text).ok(),
        Some(nft::parse_text(text)),
    ];
    for rs in sets.into_iter().flatten() {
        fuzz_ruleset(&rs);
    }
    // The packet spec parser too.
    let _ = walk::Packet::parse(text);
}

/// Everything built on a loaded ruleset, for the fuzz targets: the walked summary, its JSON and
/// walks of three packets (IPv4 from outside and from this host, IPv6).
pub fn fuzz_ruleset(rs: &Ruleset) {
    let packets = [
        "tcp 203.0.113.5:40000 -> 192.0.2.10:8080 in eth0",
        "udp 10.0.0.2:5353 -> 127.0.0.11:53",
        "tcp [2001:db8::5]:40000 -> [2001:db8::1]:8080 in eth0",
    ];
    let s = explain::summarize(rs);
    let _ = serde_json::to_string(&s);
    for (i, spec) in packets.iter().enumerate() {
        if let Ok(mut p) = walk::Packet::parse(spec) {
            p.from_host = i == 1;
            let _ = walk::walk(rs, &p, &walk::LocalFacts::default());
        }
    }
}
