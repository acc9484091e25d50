//! The lab file (TOML) and the embedded default lab, parsed and validated into a [`LabSpec`]
//! with every address assigned. Every mistake is reported with file:line before anything is built.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use toml::Spanned;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    lab: RawLab,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    container: Vec<RawContainer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    name: Option<Spanned<String>>,
    description: Option<String>,
    userland_proxy: Option<bool>,
    transparent_proxy: Option<bool>,
    backend: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Spanned<String>,
    bridge: Option<Spanned<String>>,
    subnet: Spanned<String>,
    gateway: Option<Spanned<String>>,
    ipv6: Option<Spanned<String>>,
    dns: Option<bool>,
    internal: Option<bool>,
    upstream: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    networks: Option<Vec<Spanned<String>>>,
    address: Option<Spanned<String>>,
    address6: Option<Spanned<String>>,
    #[serde(default)]
    addresses: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    run: Option<Spanned<String>>,
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

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }
    fn err<T>(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> SpecError {
        let _ = std::marker::PhantomData::<T>;
        SpecError {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            message: message.into(),
        }
    }
}

/// Parse and validate lab file text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<LabSpec, SpecError> {
    let cx = Ctx { text, file };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| cx.line_of(s.start)).unwrap_or(0);
        SpecError {
            file: file.into(),
            line,
            message: e.message().trim().to_string(),
        }
    })?;

    let name = match &raw.lab.name {
        Some(n) => {
            if !valid_name(n.get_ref()) {
                return Err(cx.err::<()>(n.span(), format!("lab name '{}' must be 1-48 characters of letters, digits, '-', '_', '.', starting with a letter or digit", n.get_ref())));
            }
            n.get_ref().clone()
        }
        None => "nettool".into(),
    };
    let backend = match &raw.lab.backend {
        None => None,
        Some(b) => Some(match b.get_ref().as_str() {
            "iptables" => Backend::Iptables,
            "nftables" => Backend::Nftables,
            other => {
                return Err(cx.err::<()>(
                    b.span(),
                    format!("unknown backend '{other}' (iptables or nftables)"),
                ))
            }
        }),
    };

    // Networks.
    let mut networks: Vec<NetworkSpec> = Vec::new();
    let mut net_lines: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    let mut bridges: BTreeSet<String> = BTreeSet::new();
    for n in &raw.network {
        let nname = n.name.get_ref();
        if !valid_name(nname) {
            return Err(cx.err::<()>(
                n.name.span(),
                format!("network name '{nname}' must be letters, digits, '-', '_', '.'"),
            ));
        }
        if net_lines.contains_key(nname) {
            return Err(cx.err::<()>(n.name.span(), format!("duplicate network name '{nname}'")));
        }
        let subnet: Ipv4Net = n.subnet.get_ref().parse().map_err(|_| {
            cx.err::<()>(
                n.subnet.span(),
                format!(
                    "'{}' is not an IPv4 subnet like 172.19.0.0/16",
                    n.subnet.get_ref()
                ),
            )
        })?;
        if subnet.prefix_len() < MIN_PREFIX {
            return Err(cx.err::<()>(
                n.subnet.span(),
                format!("subnet {subnet} is too wide: a lab network masquerades everything it covers, and /{} covers {} (the host's own routes included); use a /{MIN_PREFIX} or narrower, e.g. 10.99.0.0/16", subnet.prefix_len(), if subnet.prefix_len() == 0 { "every IPv4 address".to_string() } else { format!("2^{} addresses", 32 - subnet.prefix_len()) }),
            ));
        }
        if subnet.prefix_len() > 30 {
            return Err(cx.err::<()>(
                n.subnet.span(),
                format!("subnet {subnet} is too small (at most /30)"),
            ));
        }
        if subnet.trunc() != subnet {
            return Err(cx.err::<()>(
                n.subnet.span(),
                format!(
                    "subnet {subnet} has host bits set; did you mean {}?",
                    subnet.trunc()
                ),
            ));
        }
        for other in &networks {
            if other.subnet.contains(&subnet.network()) || subnet.contains(&other.subnet.network())
            {
                return Err(cx.err::<()>(
                    n.subnet.span(),
                    format!(
                        "subnet {subnet} of network '{nname}' overlaps {} of network '{}'",
                        other.subnet, other.name
                    ),
                ));
            }
        }
        let gateway = match &n.gateway {
            None => first_host(subnet),
            Some(g) => {
                let ip: Ipv4Addr = g.get_ref().parse().map_err(|_| {
                    cx.err::<()>(
                        g.span(),
                        format!("'{}' is not an IPv4 address", g.get_ref()),
                    )
                })?;
                if !host_in(subnet, ip) {
                    return Err(cx.err::<()>(g.span(), format!("gateway {ip} is outside subnet {subnet} (or is its network/broadcast address)")));
                }
                ip
            }
        };
        let (ipv6, gateway6) = match &n.ipv6 {
            None => (None, None),
            Some(v) => {
                let net: Ipv6Net = v.get_ref().parse().map_err(|_| {
                    cx.err::<()>(
                        v.span(),
                        format!("'{}' is not an IPv6 subnet like fd00:19::/64", v.get_ref()),
                    )
                })?;
                if net.prefix_len() > 120 || net.trunc() != net {
                    return Err(cx.err::<()>(
                        v.span(),
                        format!("IPv6 subnet {net} must be a network address of at most /120"),
                    ));
                }
                for other in &networks {
                    if let Some(o) = other.ipv6 {
                        if o.contains(&net.network()) || net.contains(&o.network()) {
                            return Err(cx.err::<()>(
                                v.span(),
                                format!(
                                    "IPv6 subnet {net} overlaps {o} of network '{}'",
                                    other.name
                                ),
                            ));
                        }
                    }
                }
                let gw = Ipv6Addr::from(u128::from(net.network()) + 1);
                (Some(net), Some(gw))
            }
        };
        if let Some(b) = &n.bridge {
            let bn = b.get_ref();
            if bn.is_empty()
                || bn.len() > 15
                || !bn
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(cx.err::<()>(
                    b.span(),
                    format!("bridge name '{bn}' must be 1-15 letters, digits, '-' or '_'"),
                ));
            }
            if !bridges.insert(bn.clone()) {
                return Err(cx.err::<()>(b.span(), format!("bridge name '{bn}' is used twice")));
            }
        }
        let upstream = match &n.upstream {
            None => None,
            Some(u) => Some(
                u.get_ref()
                    .parse::<SocketAddr>()
                    .or_else(|_| {
                        u.get_ref()
                            .parse::<IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        cx.err::<()>(
                            u.span(),
                            format!("upstream '{}' is not an IP or IP:PORT", u.get_ref()),
                        )
                    })?,
            ),
        };
        if let Some(m) = &n.mtu {
            if !(576..=65535).contains(m.get_ref()) {
                return Err(cx.err::<()>(m.span(), "mtu must be between 576 and 65535"));
            }
        }
        net_lines.insert(nname.clone(), n.name.span());
        networks.push(NetworkSpec {
            name: nname.clone(),
            bridge: n.bridge.as_ref().map(|b| b.get_ref().clone()),
            subnet,
            gateway,
            ipv6,
            gateway6,
            dns: n.dns.unwrap_or(true),
            internal: n.internal.unwrap_or(false),
            upstream,
            mtu: n.mtu.as_ref().map(|m| *m.get_ref()),
        });
    }

    // Containers: names, modes, networks, then fixed addresses, then IPAM.
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut used: HashMap<IpAddr, String> = HashMap::new();
    for n in &networks {
        used.insert(
            IpAddr::V4(n.gateway),
            format!("the gateway of network '{}'", n.name),
        );
        if let Some(g) = n.gateway6 {
            used.insert(
                IpAddr::V6(g),
                format!("the gateway of network '{}'", n.name),
            );
        }
    }
    let mut containers: Vec<ContainerSpec> = Vec::new();
    // (container index, network) pairs still needing a dynamic address.
    let mut pending: Vec<(usize, usize, bool)> = Vec::new();
    let mut published: Vec<(PortSpec, String)> = Vec::new();
    for (ci, c) in raw.container.iter().enumerate() {
        let cname = c.name.get_ref();
        if !valid_name(cname) {
            return Err(cx.err::<()>(
                c.name.span(),
                format!("container name '{cname}' must be letters, digits, '-', '_', '.'"),
            ));
        }
        if seen.insert(cname.clone(), ()).is_some() {
            return Err(cx.err::<()>(c.name.span(), format!("duplicate container name '{cname}'")));
        }
        let mode = match &c.mode {
            None => Mode::Bridge,
            Some(m) => match m.get_ref().as_str() {
                "bridge" => Mode::Bridge,
                "host" => Mode::Host,
                "none" => Mode::None,
                s => match s.strip_prefix("container:") {
                    Some(target) => {
                        let t = raw.container.iter().find(|o| o.name.get_ref() == target);
                        match t {
                            None => {
                                return Err(cx.err::<()>(
                                    m.span(),
                                    format!("mode {s}: no container named '{target}' in this lab"),
                                ))
                            }
                            Some(t) if t.name.get_ref() == cname => {
                                return Err(cx.err::<()>(
                                    m.span(),
                                    "a container cannot join its own namespace",
                                ))
                            }
                            Some(t) => {
                                let tm = t
                                    .mode
                                    .as_ref()
                                    .map(|m| m.get_ref().as_str())
                                    .unwrap_or("bridge");
                                if tm != "bridge" && tm != "none" {
                                    return Err(cx.err::<()>(m.span(), format!("mode {s}: '{target}' has mode {tm}; only bridge or none containers can be joined")));
                                }
                            }
                        }
                        Mode::Container(target.to_string())
                    }
                    None => {
                        return Err(cx.err::<()>(
                            m.span(),
                            format!("unknown mode '{s}' (bridge, host, none or container:NAME)"),
                        ))
                    }
                },
            },
        };
        let mut nets: Vec<&Spanned<String>> = Vec::new();
        if let Some(n) = &c.network {
            nets.push(n);
        }
        if let Some(ns) = &c.networks {
            nets.extend(ns.iter());
        }
        if mode != Mode::Bridge {
            if let Some(n) = nets.first() {
                return Err(cx.err::<()>(n.span(), format!("container '{cname}' has mode {mode}: it joins no network (remove network/networks)")));
            }
            if let Some(a) = c.address.as_ref().or(c.address6.as_ref()) {
                return Err(cx.err::<()>(
                    a.span(),
                    format!("container '{cname}' has mode {mode}: it gets no address"),
                ));
            }
            if !c.ports.is_empty() && mode != Mode::None {
                return Err(cx.err::<()>(c.ports[0].span(), format!("container '{cname}' has mode {mode}: publish ports on the container that owns the namespace (Docker refuses this too)")));
            }
            if !c.ports.is_empty() {
                return Err(cx.err::<()>(
                    c.ports[0].span(),
                    format!("container '{cname}' has mode none: it has no network to publish from"),
                ));
            }
        } else if nets.is_empty() {
            match networks.first() {
                Some(_) => {}
                None => return Err(cx.err::<()>(c.name.span(), format!("container '{cname}' needs a network, but the lab defines none (add a [[network]])"))),
            }
        }
        let mut net_names: Vec<String> = nets.iter().map(|n| n.get_ref().clone()).collect();
        if mode == Mode::Bridge && net_names.is_empty() {
            net_names.push(networks[0].name.clone());
        }
        let mut attachments = Vec::new();
        for (k, nn) in net_names.iter().enumerate() {
            let span = nets.get(k).map(|s| s.span()).unwrap_or(c.name.span());
            let Some(ni) = networks.iter().position(|n| &n.name == nn) else {
                return Err(cx.err::<()>(
                    span,
                    format!(
                        "container '{cname}': no network named '{nn}' (networks: {})",
                        networks
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if net_names[..k].contains(nn) {
                return Err(cx.err::<()>(
                    span,
                    format!("container '{cname}' joins network '{nn}' twice"),
                ));
            }
            let net = &networks[ni];
            // Fixed address: `address` for the first network, `addresses.NET` for any.
            let fixed: Option<&Spanned<String>> =
                c.addresses
                    .get(nn)
                    .or(if k == 0 { c.address.as_ref() } else { None });
            let mut a = Attachment {
                network: nn.clone(),
                address: Ipv4Addr::UNSPECIFIED,
                address6: None,
            };
            match fixed {
                Some(f) => {
                    let ip: Ipv4Addr = f.get_ref().parse().map_err(|_| {
                        cx.err::<()>(
                            f.span(),
                            format!("'{}' is not an IPv4 address", f.get_ref()),
                        )
                    })?;
                    if !host_in(net.subnet, ip) {
                        return Err(cx.err::<()>(f.span(), format!("address {ip} of container '{cname}' is outside subnet {} of network '{nn}'", net.subnet)));
                    }
                    if let Some(owner) = used.insert(IpAddr::V4(ip), format!("container '{cname}'"))
                    {
                        return Err(cx.err::<()>(
                            f.span(),
                            format!("address {ip} of container '{cname}' is already {owner}"),
                        ));
                    }
                    a.address = ip;
                }
                None => pending.push((ci, k, false)),
            }
            if let Some(v6) = net.ipv6 {
                match (k == 0).then_some(c.address6.as_ref()).flatten() {
                    Some(f) => {
                        let ip: Ipv6Addr = f.get_ref().parse().map_err(|_| {
                            cx.err::<()>(
                                f.span(),
                                format!("'{}' is not an IPv6 address", f.get_ref()),
                            )
                        })?;
                        if !v6.contains(&ip) || ip == v6.network() {
                            return Err(cx.err::<()>(
                                f.span(),
                                format!(
                                    "address {ip} is outside IPv6 subnet {v6} of network '{nn}'"
                                ),
                            ));
                        }
                        if let Some(owner) =
                            used.insert(IpAddr::V6(ip), format!("container '{cname}'"))
                        {
                            return Err(
                                cx.err::<()>(f.span(), format!("address {ip} is already {owner}"))
                            );
                        }
                        a.address6 = Some(ip);
                    }
                    None => pending.push((ci, k, true)),
                }
            } else if k == 0 {
                if let Some(f) = &c.address6 {
                    return Err(cx.err::<()>(
                        f.span(),
                        format!("network '{nn}' has no ipv6 subnet for address6"),
                    ));
                }
            }
            attachments.push(a);
        }
        for key in c.addresses.keys() {
            if !net_names.contains(key) {
                let f = &c.addresses[key];
                return Err(cx.err::<()>(
                    f.span(),
                    format!("addresses.{key}: container '{cname}' does not join network '{key}'"),
                ));
            }
        }
        let mut aliases = Vec::new();
        for a in &c.aliases {
            if !valid_name(a.get_ref()) {
                return Err(cx.err::<()>(
                    a.span(),
                    format!("alias '{}' is not a valid DNS name", a.get_ref()),
                ));
            }
            aliases.push(a.get_ref().clone());
        }
        let mut ports = Vec::new();
        for p in &c.ports {
            let spec = parse_port(p.get_ref())
                .map_err(|e| cx.err::<()>(p.span(), format!("port '{}': {e}", p.get_ref())))?;
            if spec.host_ip.is_ipv6() {
                return Err(cx.err::<()>(p.span(), format!("port '{}': publishing on an IPv6 host address is not supported yet (the lab's DNAT is IPv4); use an IPv4 host address or leave it out", p.get_ref())));
            }
            for (other, owner) in &published {
                let overlap = other.host_ip.is_unspecified()
                    || spec.host_ip.is_unspecified()
                    || other.host_ip == spec.host_ip;
                if other.proto == spec.proto && other.host_port == spec.host_port && overlap {
                    return Err(cx.err::<()>(
                        p.span(),
                        format!(
                            "port {}/{} on {} is already published by container '{owner}'",
                            spec.host_port, spec.proto, spec.host_ip
                        ),
                    ));
                }
            }
            published.push((spec.clone(), cname.clone()));
            ports.push(spec);
        }
        let (run, argv) = match &c.run {
            None => (None, Vec::new()),
            Some(r) => {
                let argv = split_words(r.get_ref())
                    .map_err(|e| cx.err::<()>(r.span(), format!("run: {e}")))?;
                if argv.is_empty() {
                    return Err(cx.err::<()>(r.span(), "run is empty"));
                }
                (Some(r.get_ref().clone()), argv)
            }
        };
        containers.push(ContainerSpec {
            name: cname.clone(),
            mode,
            attachments,
            aliases,
            ports,
            run,
            argv,
        });
    }
    // Aliases must not collide with container names on a shared network; keep it simple: globally.
    let mut names: BTreeSet<String> = containers.iter().map(|c| c.name.clone()).collect();
    for (ci, c) in containers.iter().enumerate() {
        for (ai, a) in c.aliases.iter().enumerate() {
            if !names.insert(a.clone()) {
                return Err(cx.err::<()>(
                    raw.container[ci].aliases[ai].span(),
                    format!("alias '{a}' is already a container name or alias"),
                ));
            }
        }
    }
    // A Linux bridge takes at most BR_MAX_PORTS - 1 ports (port 0 is reserved); past that the
    // kernel answers EXFULL ("Exchange full") half way through the build.
    for n in &networks {
        let on = containers
            .iter()
            .flat_map(|c| &c.attachments)
            .filter(|a| a.network == n.name)
            .count();
        if on > MAX_BRIDGE_PORTS {
            return Err(cx.err::<()>(
                net_lines[&n.name].clone(),
                format!(
                    "network '{}' has {on} containers, but a Linux bridge takes at most {MAX_BRIDGE_PORTS} ports (the kernel's BR_MAX_PORTS); split them over more networks",
                    n.name
                ),
            ));
        }
    }
    // IPAM: next free address per network, in file order (gateway .1 is taken).
    for (ci, k, v6) in pending {
        let nn = containers[ci].attachments[k].network.clone();
        let net = networks
            .iter()
            .find(|n| n.name == nn)
            .expect("validated above");
        if v6 {
            let base = u128::from(net.ipv6.expect("v6 checked").network());
            let size = 1u128 << (128 - net.ipv6.expect("v6").prefix_len()).min(127);
            let ip = (2..size)
                .map(|i| Ipv6Addr::from(base + i))
                .find(|ip| !used.contains_key(&IpAddr::V6(*ip)))
                .ok_or_else(|| {
                    cx.err::<()>(
                        raw.container[ci].name.span(),
                        format!("IPv6 subnet of network '{nn}' is full"),
                    )
                })?;
            used.insert(
                IpAddr::V6(ip),
                format!("container '{}'", containers[ci].name),
            );
            containers[ci].attachments[k].address6 = Some(ip);
        } else {
            let ip = net
                .subnet
                .hosts()
                .find(|ip| !used.contains_key(&IpAddr::V4(*ip)))
                .ok_or_else(|| {
                    cx.err::<()>(
                        raw.container[ci].name.span(),
                        format!("subnet {} of network '{nn}' is full", net.subnet),
                    )
                })?;
            used.insert(
                IpAddr::V4(ip),
                format!("container '{}'", containers[ci].name),
            );
            containers[ci].attachments[k].address = ip;
        }
    }
    let _ = net_lines;
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

fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// A usable host address of `net` (not the network or broadcast address).
fn host_in(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
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

    #[test]
    fn mistakes_of_each_part_keep_their_text() {
        for p in ["toml_", "lab_", "net_", "ctr_", "addr", "alias_", "bridge_"] {
            cases::check_mistakes(p);
        }
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
