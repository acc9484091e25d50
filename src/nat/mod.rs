//! NAT and filter rules: load them (iptables-save, iptables -S, nft JSON or text, or live from a
//! namespace), explain them in plain words, and walk a packet through them.

pub mod explain;
pub mod iptables;
pub mod model;
pub mod nft;
pub mod reach;
pub mod synth;
pub mod walk;

use std::process::{Command, Stdio};

pub use model::Ruleset;

use crate::netns::NetNs;

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
pub fn parse_text(text: &str, table: Option<&str>, source: &str) -> Result<Ruleset, NatError> {
    let mut rs = match detect(text) {
        Format::NftJson => nft::parse(text)?,
        Format::NftText => nft::parse_text(text),
        Format::IptablesSave => iptables::parse_save(text),
        Format::IptablesS => {
            iptables::parse_rules(text, table.unwrap_or_else(|| iptables::guess_table(text)))
        }
    };
    rs.source = source.to_string();
    Ok(rs)
}

/// Read and parse a file (see [`parse_text`]).
pub fn load_file(path: &str, table: Option<&str>) -> Result<Ruleset, NatError> {
    let text = std::fs::read_to_string(path).map_err(|source| NatError::Read {
        path: path.to_string(),
        source,
    })?;
    parse_text(&text, table, path)
}

/// Run argv inside `ns` and capture stdout; Err carries a short reason.
fn capture(ns: &NetNs, argv: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child =
        crate::netns::exec::spawn(ns, cmd, &Default::default()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} exited with {}: {}",
            argv[0],
            out.status,
            err.lines().next().unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Does an iptables-save dump hold at least one rule?
fn has_rules(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("-A ") || (l.starts_with('[') && l.contains("] -A "))
    })
}

/// Read every rule in a namespace: iptables-nft-save, iptables-legacy-save (warning when both
/// hold rules: the classic split-backend trap), and `nft -j list ruleset` for native nft tables.
pub fn load_live(ns: &NetNs) -> Result<Ruleset, NatError> {
    let label = ns.label().to_string();
    let mut rs = Ruleset {
        source: format!("namespace {label}"),
        ..Default::default()
    };
    let mut why = Vec::new();
    let mut any = false;
    let nft_save = capture(ns, &["iptables-nft-save"]);
    let legacy_save = capture(ns, &["iptables-legacy-save"]);
    let (nft_text, legacy_text) = match (&nft_save, &legacy_save) {
        (Err(a), Err(b)) => {
            why.push(a.clone());
            why.push(b.clone());
            // Old systems: only plain iptables-save.
            match capture(ns, &["iptables-save"]) {
                Ok(t) => (Some(t), None),
                Err(e) => {
                    why.push(e);
                    (None, None)
                }
            }
        }
        (a, b) => (a.clone().ok(), b.clone().ok()),
    };
    let nft_has = nft_text.as_deref().is_some_and(has_rules);
    let legacy_has = legacy_text.as_deref().is_some_and(has_rules);
    if nft_has && legacy_has {
        rs.warnings.push(
            "rules are split between iptables-nft and iptables-legacy: both sets run, in separate tables; \
             tools that use one backend do not see the other's rules (check which `iptables` your software calls)"
                .into(),
        );
    }
    for (name, text) in [("iptables-nft", nft_text), ("iptables-legacy", legacy_text)] {
        if let Some(t) = text {
            any = true;
            if name == "iptables-legacy" && !has_rules(&t) && nft_has {
                continue;
            }
            if name == "iptables-nft" && !has_rules(&t) && legacy_has {
                continue;
            }
            let mut part = iptables::parse_save(&t);
            part.source = format!("{name}-save in {label}");
            for p in &mut part.problems {
                p.message = format!("{name}-save line {}: {}", p.line, p.message);
            }
            rs.merge(part);
        }
    }
    match capture(ns, &["nft", "-j", "list", "ruleset"]) {
        Ok(json) => {
            any = true;
            match nft::parse(&json) {
                Ok(mut part) => {
                    // iptables-nft keeps its rules in nft tables too: skip those, they came in above.
                    part.tables.retain(|t| !nft::is_iptables_nft_table(t));
                    part.source = format!("nft in {label}");
                    rs.merge(part);
                }
                Err(e) => rs.warnings.push(format!("nft -j list ruleset: {e}")),
            }
        }
        Err(e) => why.push(e),
    }
    rs.source = format!("namespace {label}");
    if !any {
        return Err(NatError::NoTools {
            ns: label,
            why: why.join("; "),
        });
    }
    Ok(rs)
}

/// Addresses, routes and forwarding of a namespace, for the packet walk.
pub fn local_facts(ns: &NetNs) -> Result<walk::LocalFacts, NatError> {
    let snap = ns.run(|| {
        let snap = crate::netns::links::snapshot();
        let fwd = crate::netns::sysctl::read("net.ipv4.ip_forward");
        (snap, fwd)
    })?;
    let (snap, fwd) = snap;
    let snap = snap.map_err(|e| NatError::NoTools {
        ns: ns.label().to_string(),
        why: format!("cannot read addresses and routes: {e}"),
    })?;
    let name_of = |idx: u32| {
        snap.links
            .iter()
            .find(|l| l.index == idx)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{idx}"))
    };
    let addrs = snap
        .addresses
        .iter()
        .map(|a| (a.address, name_of(a.index)))
        .collect();
    let routes = snap
        .routes
        .iter()
        .filter(|r| r.kind == "unicast" || r.kind == "local")
        .filter_map(|r| {
            let dev = name_of(r.oif?);
            let net = match r.destination {
                Some(d) => ipnet::IpNet::new(d, r.prefix_len).ok()?,
                None => {
                    // default route: family from gateway or prefsrc; assume IPv4 when unknown
                    let v6 = r.gateway.map(|g| g.is_ipv6()).unwrap_or(false);
                    if v6 {
                        "::/0".parse().ok()?
                    } else {
                        "0.0.0.0/0".parse().ok()?
                    }
                }
            };
            Some(walk::RouteFact {
                net,
                dev,
                src: r.prefsrc,
            })
        })
        .collect();
    Ok(walk::LocalFacts {
        addrs,
        routes,
        forwarding: fwd.map(|v| v.trim() == "1"),
    })
}

/// Who is behind an address ("container web", "netns lab-web"): every container or named
/// namespace, entered to read its addresses.
pub fn container_addresses() -> std::collections::HashMap<std::net::IpAddr, String> {
    use crate::netns::discover::{discover, DiscoverOptions};
    let mut out = std::collections::HashMap::new();
    // nettool labs first: their state names the container behind each address.
    for lab in crate::lab::state::list() {
        if let Ok(st) = crate::lab::state::load(&lab) {
            for c in &st.containers {
                for i in &c.networks {
                    out.entry(std::net::IpAddr::V4(i.address))
                        .or_insert_with(|| format!("container {} of lab {}", c.name, st.name));
                }
            }
        }
    }
    let all = discover(DiscoverOptions {
        skip_interfaces: true,
        skip_docker: false,
    });
    for n in all.iter().filter(|n| !n.current) {
        let name = match n.containers.first() {
            Some(c) => format!(
                "container {}",
                c.name
                    .clone()
                    .unwrap_or_else(|| c.id.chars().take(12).collect())
            ),
            None => match n.names.first() {
                Some(nm) => format!("netns {nm}"),
                None => continue,
            },
        };
        let Ok(ns) = n.open() else { continue };
        if let Ok(Ok(snap)) = ns.run(crate::netns::links::snapshot) {
            for a in snap.addresses {
                if !a.address.is_loopback()
                    && !matches!(a.address, std::net::IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
                {
                    out.entry(a.address).or_insert_with(|| name.clone());
                }
            }
        }
    }
    out
}
