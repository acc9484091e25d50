//! The lab file (TOML) and the embedded default lab, parsed and validated into a [`LabSpec`]
//! with every address assigned. Every mistake is reported with file:line before anything is built.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

mod addresses;
mod checks;
mod containers;
mod networks;
mod read;

/// Ports a Linux bridge takes (BR_MAX_PORTS is 1024, port number 0 is reserved).
pub const MAX_BRIDGE_PORTS: usize = 1023;

/// The widest lab subnet: Docker's own pools stop at /8 too.
const MIN_PREFIX: u8 = 8;

/// The embedded default lab (`nettool setup` with no file). Also shipped as docs/labs/default.toml.
pub const DEFAULT_LAB: &str = include_str!("default.toml");

/// A lab file mistake: where and what.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpecError {
    /// The lab file (or `<default lab>`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// The firewall backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-restore --noflush`, Docker's classic structure.
    Iptables,
    /// `nft -f` into our own table.
    Nftables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        })
    }
}

/// One network (a bridge) after validation.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSpec {
    /// Network name.
    pub name: String,
    /// Explicit bridge name from the file, if any.
    pub bridge: Option<String>,
    /// IPv4 subnet.
    pub subnet: Ipv4Net,
    /// Gateway address (on the bridge).
    pub gateway: Ipv4Addr,
    /// Optional IPv6 subnet.
    pub ipv6: Option<Ipv6Net>,
    /// IPv6 gateway (first address of the IPv6 subnet).
    pub gateway6: Option<Ipv6Addr>,
    /// Embedded DNS for containers on this network.
    pub dns: bool,
    /// No MASQUERADE and no route out (Docker's --internal).
    pub internal: bool,
    /// Where the resolver forwards names it does not know (never by default).
    pub upstream: Option<SocketAddr>,
    /// MTU of the bridge and its veths.
    pub mtu: Option<u32>,
}

/// How a container is networked (Docker's --network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Own namespace, one veth per network.
    Bridge,
    /// The lab's host namespace.
    Host,
    /// Own namespace with only lo.
    None,
    /// Shares another container's namespace.
    Container(String),
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Bridge => f.write_str("bridge"),
            Mode::Host => f.write_str("host"),
            Mode::None => f.write_str("none"),
            Mode::Container(n) => write!(f, "container:{n}"),
        }
    }
}

/// One network a container joins, with its assigned addresses.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    /// The network name.
    pub network: String,
    /// IPv4 address.
    pub address: Ipv4Addr,
    /// IPv6 address when the network has IPv6.
    pub address6: Option<Ipv6Addr>,
}

/// Transport protocol of a port map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port, `-p host_ip:host_port:container_port/proto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    /// tcp or udp.
    pub proto: Proto,
    /// Host address (0.0.0.0 = every address).
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
}

/// One container after validation.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Network mode.
    pub mode: Mode,
    /// Networks joined (bridge mode only), in interface order eth0, eth1...
    pub attachments: Vec<Attachment>,
    /// Extra DNS names on every network it joins.
    pub aliases: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortSpec>,
    /// The command to start inside, as written.
    pub run: Option<String>,
    /// The command split into argv.
    pub argv: Vec<String>,
}

/// A validated lab: networks and containers with every address assigned.
#[derive(Debug, Clone, Serialize)]
pub struct LabSpec {
    /// The lab name from the file (the CLI's --name wins).
    pub name: String,
    /// Where it came from: a path or `<default lab>`.
    pub source: String,
    /// Free text from the file.
    pub description: Option<String>,
    /// Userland proxy preference from the file (the CLI flag wins).
    pub userland_proxy: Option<bool>,
    /// The userland proxies run in transparent mode: containers see the client's address.
    pub transparent_proxy: bool,
    /// Backend preference from the file (the CLI flag wins).
    pub backend: Option<Backend>,
    /// Networks in file order.
    pub networks: Vec<NetworkSpec>,
    /// Containers in file order.
    pub containers: Vec<ContainerSpec>,
}

impl LabSpec {
    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == name)
    }
    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// The default lab, parsed.
pub fn default_lab() -> Result<LabSpec, SpecError> {
    parse(DEFAULT_LAB, "<default lab>")
}

/// Read and validate a lab file.
pub fn load(path: &std::path::Path) -> Result<LabSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read the lab file: {e}"),
    })?;
    parse(&text, &path.display().to_string())
}

/// Is `s` a usable name for a lab, network or container (it ends up in namespace and file names)?
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Split a `run = "..."` command like a shell would split words (quotes and backslashes),
/// without ever running a shell.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c)
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c)
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parse `[host_ip:]host_port:container_port[/proto]` (IPv6 host ip in brackets).
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some((_, p)) => return Err(format!("unknown protocol '{p}' (tcp or udp)")),
        None => (s, Proto::Tcp),
    };
    let (host_ip, rest): (IpAddr, &str) = if let Some(r) = body.strip_prefix('[') {
        let (ip, rest) = r
            .split_once("]:")
            .ok_or_else(|| "IPv6 host address must look like [::1]:8080:80".to_string())?;
        (
            ip.parse()
                .map_err(|_| format!("'{ip}' is not an IPv6 address"))?,
            rest,
        )
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            2 => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), body),
            3 => (
                parts[0]
                    .parse()
                    .map_err(|_| format!("'{}' is not an IP address", parts[0]))?,
                &body[parts[0].len() + 1..],
            ),
            _ => {
                return Err(
                    "expected HOST_PORT:CONTAINER_PORT or HOST_IP:HOST_PORT:CONTAINER_PORT, optionally /udp"
                        .into(),
                )
            }
        }
    };
    let (hp, cp) = rest
        .split_once(':')
        .ok_or_else(|| "expected HOST_PORT:CONTAINER_PORT".to_string())?;
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("'{p}' is not a port (1-65535)")),
        }
    };
    Ok(PortSpec {
        proto,
        host_ip,
        host_port: port(hp)?,
        container_port: port(cp)?,
    })
}

/// Parse and validate lab file text; `file` names it in errors. The parts run in this order,
/// and the first mistake stops: the TOML and `[lab]`, each network, each container (with its
/// fixed addresses), the checks across the lab, then the next free addresses.
pub fn parse(text: &str, file: &str) -> Result<LabSpec, SpecError> {
    let cx = read::Ctx { text, file };
    let raw = read::toml(&cx)?;
    let (name, backend) = read::lab_section(&cx, &raw.lab)?;
    let networks = networks::networks(&cx, &raw.network)?;
    let mut plan = addresses::AddressPlan::new(&networks);
    let mut containers = containers::containers(&cx, &raw.container, &networks, &mut plan)?;
    checks::aliases_unique(&cx, &raw.container, &containers)?;
    checks::bridge_ports(&cx, &raw.network, &networks, &containers)?;
    plan.assign(&cx, &raw.container, &networks, &mut containers)?;
    Ok(LabSpec {
        name,
        source: file.into(),
        description: raw.lab.description,
        userland_proxy: raw.lab.userland_proxy,
        transparent_proxy: raw.lab.transparent_proxy.unwrap_or(false),
        backend,
        networks,
        containers,
    })
}

/// One fuzz input through the lab file parser (the cargo-fuzz target `lab_spec` and the stable
/// replay in `cargo test --lib fuzz_replay` call it): parsed, its error rendered with its line,
/// and an accepted lab planned both ways (host and `--isolated`) and serialised as `--dry-run
/// --json` does. No input may panic.
pub fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, "fuzz.toml") {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(spec) => {
            for isolated in [false, true] {
                let opts = super::plan::Options {
                    name: None,
                    isolated,
                    backend: None,
                    proxy: super::plan::ProxyMode::DockerStyle,
                };
                let p = super::plan::plan(&spec, &opts, false);
                let _ = serde_json::to_string(&p);
            }
        }
    }
}

#[cfg(test)]
mod cases;

#[cfg(test)]
mod fuzz_replay {
    /// The fuzz target's body on stable: every lab file in the repository and a bounded
    /// pseudo-random loop of byte and line mutations of each (cargo-fuzz runs the same body for
    /// real; see docs/fuzzing.md).
    #[test]
    fn lab_spec_survives_seeds_and_mutations() {
        let seeds: [&str; 7] = [
            super::DEFAULT_LAB,
            include_str!("../../docs/labs/default.toml"),
            include_str!("../../docs/labs/udp.toml"),
            include_str!("../../docs/labs/ipv6.toml"),
            include_str!("../../docs/labs/ten-containers.toml"),
            include_str!("../../docs/labs/two-networks.toml"),
            include_str!("../../docs/labs/modes.toml"),
        ];
        // Tokens that steer mutations into the parser's own checks rather than TOML's.
        let tokens: [&[u8]; 12] = [
            b"0.0.0.0/0",
            b"::/0",
            b"255.255.255.255/32",
            b"\"65535:0/udp\"",
            b"[::1]:0:0",
            b"\n[[container]]\nname = \"x\"\n",
            b"\n[[network]]\nname = \"x\"\nsubnet = \"10.0.0.0/31\"\n",
            b"'\\'",
            b"\"\\u0000\"",
            b"1e400",
            b"-9223372036854775808",
            b"mtu = 0\n",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut runs = 0;
        for seed in seeds {
            super::fuzz_one(seed.as_bytes());
            runs += 1;
            for _ in 0..150 {
                let mut v = seed.as_bytes().to_vec();
                for _ in 0..(next() % 6 + 1) {
                    let r = next() as usize;
                    match r % 5 {
                        0 if !v.is_empty() => {
                            let i = r / 5 % v.len();
                            v[i] = (next() & 0x7f) as u8;
                        }
                        1 if !v.is_empty() => {
                            let i = r / 5 % v.len();
                            let n = (next() % 40) as usize;
                            v.drain(i..(i + n).min(v.len()));
                        }
                        2 => {
                            let t = tokens[(next() % tokens.len() as u64) as usize];
                            let i = r / 5 % (v.len() + 1);
                            v.splice(i..i, t.iter().copied());
                        }
                        3 => {
                            // Duplicate a line: repeated keys, networks and containers.
                            let lines: Vec<&[u8]> = v.split(|&b| b == b'\n').collect();
                            let l = lines[r / 5 % lines.len()].to_vec();
                            v.extend_from_slice(b"\n");
                            v.extend_from_slice(&l);
                        }
                        _ => v.insert(r / 5 % (v.len() + 1), (next() & 0xff) as u8),
                    }
                }
                super::fuzz_one(&v);
                runs += 1;
            }
        }
        assert_eq!(runs, 7 * 151);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_parses() {
        let lab = default_lab().unwrap();
        let web = lab.container("web").unwrap();
        assert_eq!(web.attachments[0].address, Ipv4Addr::new(172, 19, 0, 2));
        assert_eq!(web.ports[0].host_port, 8080);
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words("a 'b c' \"d\\\"e\" f\\ g").unwrap(),
            vec!["a", "b c", "d\"e", "f g"]
        );
        assert!(split_words("'x").is_err());
    }

    #[test]
    fn ports() {
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_port("[::1]:81:80").unwrap().host_port, 81);
        assert!(parse_port("80").is_err());
        assert!(parse_port("0:80").is_err());
    }

    fn err(text: &str) -> String {
        parse(text, "lab.toml").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_have_lines() {
        assert!(
            err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\nbogus = 1\n")
                .starts_with("lab.toml:4:")
        );
        let e = err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/16\"\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\n");
        assert!(
            e.starts_with("lab.toml:6:") && e.contains("overlaps"),
            "{e}"
        );
        let e = err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\naddress = \"10.0.1.2\"\n");
        assert!(e.starts_with("lab.toml:6:") && e.contains("outside"), "{e}");
        let e = err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"x\"\n");
        assert!(
            e.starts_with("lab.toml:7:") && e.contains("duplicate"),
            "{e}"
        );
        let e = err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\naddress = \"10.0.0.5\"\n[[container]]\nname = \"y\"\naddress = \"10.0.0.5\"\n");
        assert!(e.starts_with("lab.toml:9:") && e.contains("already"), "{e}");
        let e = err("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\nports = [\"80:80\"]\n[[container]]\nname = \"y\"\nports = [\"80:81\"]\n");
        assert!(
            e.starts_with("lab.toml:9:") && e.contains("already published"),
            "{e}"
        );
    }

    /// Each mistake case is named after the part of the parser that finds it, and has a recorded
    /// message.
    #[test]
    fn every_mistake_case_has_a_part_and_a_message() {
        let parts = ["toml_", "lab_", "net_", "ctr_", "addr", "alias_", "bridge_"];
        let names: Vec<&str> = cases::mistake_cases().iter().map(|(n, _)| *n).collect();
        for n in &names {
            assert!(parts.iter().any(|p| n.starts_with(p)), "{n}");
        }
        let recorded: Vec<&str> = cases::MISTAKES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, recorded);
    }

    /// The labs the parser accepts parse to the same `LabSpec` (as `--dry-run --json` shows it)
    /// as recorded in spec/accepted.golden.
    #[test]
    fn accepted_labs_parse_as_recorded() {
        let golden = include_str!("spec/accepted.golden");
        let cases = cases::accepted_cases();
        assert_eq!(golden.lines().count(), cases.len());
        for ((name, text), line) in cases.iter().zip(golden.lines()) {
            let lab = parse(text, "lab.toml").unwrap();
            let json = serde_json::to_string(&lab).unwrap();
            assert_eq!(format!("{name}\t{json}"), line, "case {name}");
        }
    }

    #[test]
    fn ipam_next_free() {
        let lab = parse("[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n[[container]]\nname = \"x\"\n[[container]]\nname = \"y\"\naddress = \"10.0.0.2\"\n", "t").unwrap();
        assert_eq!(
            lab.container("x").unwrap().attachments[0].address,
            Ipv4Addr::new(10, 0, 0, 3)
        );
    }
}
