//! `nettool doctor`: follow a published port from its source to the socket behind it, hop by
//! hop, and say what is broken and the command that fixes it.
//!
//! The checks read facts through the core (links, routes, sockets, sysctls, veth peers) and the
//! firewall rules, and return a [`Report`]: every hop with a verdict and its evidence, one
//! [`Diagnosis`] (the first failing hop in path order) and, with `probe`, what a real connection
//! from the chosen source did. Nothing here prints; `src/cmd/doctor.rs` renders.

pub mod facts;
pub mod probe;
pub mod rules;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::nat::walk::Walk;
use crate::netns::discover::{discover, DiscoverOptions, NamespaceInfo};
use crate::netns::links::{Address, Link, Rtnl};
use crate::netns::peers::veth_peers;
use crate::netns::sockets::{Owner, Proto, Socket};
use crate::netns::{NetNs, NetnsError};

use facts::{HostFacts, NsFacts};

/// How a hop fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing wrong here.
    Ok,
    /// Suspicious, or could break other paths; not what breaks this one.
    Warn,
    /// This breaks the path.
    Fail,
}

/// The faults doctor knows how to name (the `fault` field of a hop and of the diagnosis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Nothing receives the connection: no DNAT rule matches and no process listens.
    NoReceiver,
    /// The DNAT rule sends to a port nothing listens on, while the service listens on another.
    DnatWrongPort,
    /// A localhost connection is DNATed to a container but route_localnet is 0.
    RouteLocalnetOff,
    /// Forwarded traffic while net.ipv4.ip_forward is 0.
    IpForwardOff,
    /// Strict reverse-path filtering drops the incoming packet.
    RpFilter,
    /// The FORWARD chain's policy is DROP and no rule accepts this connection.
    ForwardPolicyDrop,
    /// A rule (often in DOCKER-USER / NETTOOL-USER) drops or rejects this connection.
    FirewallDrop,
    /// Rules live in both iptables-legacy and iptables-nft.
    SplitBackends,
    /// No route to the rewritten destination.
    NoRoute,
    /// The bridge toward the destination is down.
    BridgeDown,
    /// The host has no address in the destination's subnet on that bridge.
    NoHostAddress,
    /// No namespace holds the destination address behind this host.
    TargetNotFound,
    /// One end of the veth toward the destination is down.
    VethDown,
    /// The two ends of the veth (or the veth and its bridge) have different MTUs.
    MtuMismatch,
    /// Nothing listens on the destination port inside the target namespace.
    NotListening,
    /// A stale conntrack entry keeps sending UDP to an old destination.
    StaleConntrack,
    /// br_netfilter is not loaded or off while a container talks to a published port on its own bridge.
    BrNetfilter,
    /// The target namespace has no route back to the (possibly SNATed) source.
    NoReturnRoute,
    /// Every hop looks right but the probe failed.
    ProbeFailed,
}

/// A command that fixes a fault, as argv (no shell) and as one line a person can paste.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fix {
    /// What the command does, in words.
    pub summary: String,
    /// The command to run inside the host namespace doctor examined (argv, no shell).
    pub argv: Vec<String>,
    /// The same, as one line to paste in a shell on the machine (with `ip netns exec` when
    /// the host namespace is not the current one).
    pub command: String,
    /// True when the command keeps running (a service to start): run it in the background.
    pub background: bool,
}

/// One step of the path with its verdict and the facts behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// A stable id: receiver, ip_forward, route_localnet, rp_filter, br_netfilter, firewall,
    /// route, bridge, veth, mtu, target, service, conntrack, backends.
    pub id: String,
    /// Short title shown in the table.
    pub title: String,
    /// ok, warn or fail.
    pub verdict: Verdict,
    /// One line: what was found.
    pub summary: String,
    /// The facts that led to the verdict (rules, interface states, sockets, sysctl values).
    pub evidence: Vec<String>,
    /// The fault, when the verdict is not ok.
    pub fault: Option<Fault>,
    /// The command that fixes it, when there is one.
    pub fix: Option<Fix>,
}

/// Where the connection starts.
#[derive(Debug, Clone)]
pub enum Source {
    /// Another machine, arriving on an external interface; with a namespace to probe from.
    Outside(Option<NetNs>),
    /// A process on the host connecting to one of the host's own addresses.
    Host,
    /// A process on the host connecting to 127.0.0.1.
    Localhost,
    /// A process inside this (container) namespace.
    Container(NetNs),
}

impl Source {
    /// How the source reads in the report.
    pub fn describe(&self) -> String {
        match self {
            Source::Outside(None) => "outside".into(),
            Source::Outside(Some(ns)) => format!("outside:{}", ns.label()),
            Source::Host => "host".into(),
            Source::Localhost => "localhost".into(),
            Source::Container(ns) if ns.label().starts_with("container:") => ns.label().into(),
            Source::Container(ns) => format!("container:{}", ns.label()),
        }
    }
}

/// What to diagnose.
#[derive(Debug, Clone)]
pub struct Request {
    /// The namespace acting as the host (the current one, or a lab's isolated host).
    pub host: NetNs,
    /// A name `ip netns exec` accepts for the host namespace, when it is not the current one.
    pub host_name: Option<String>,
    /// tcp or udp.
    pub proto: Proto,
    /// The published port (None with a container target: every port published to it).
    pub port: Option<u16>,
    /// The destination address the client uses (None: chosen from the source).
    pub dst: Option<IpAddr>,
    /// The source address (None: chosen from the source).
    pub src: Option<IpAddr>,
    /// The incoming interface name for an outside packet (None: chosen).
    pub iif: Option<String>,
    /// Where the connection starts.
    pub from: Source,
    /// Only consider paths ending in this namespace (`doctor container:web`).
    pub container: Option<NetNs>,
    /// Try the connection for real.
    pub probe: bool,
}

/// The packet doctor follows, as the host first sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Packet {
    /// tcp or udp.
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Destination address the client used.
    pub dst: IpAddr,
    /// Destination port the client used.
    pub dport: u16,
    /// Incoming interface on the host (None for locally generated packets).
    pub iif: Option<String>,
    /// The netfilter hook where it enters: prerouting (from outside or a container) or output (local).
    pub hook: String,
    /// True when the source address is a stand-in (TEST-NET-3), not a real client's.
    pub src_assumed: bool,
}

/// Where the connection really goes after the host is done with it.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    /// Rewritten (or proxied-to) address.
    pub addr: IpAddr,
    /// Rewritten port.
    pub port: u16,
    /// "dnat" (a rule rewrote it), "proxy" (a userland proxy connects onward) or "local" (a host socket).
    pub via: String,
    /// The DNAT rule, when `via` is dnat.
    pub rule: Option<rules::DnatRule>,
    /// The process that receives the connection on the host (proxy or local service).
    pub receiver: Option<Owner>,
    /// The namespace holding `addr` (its label), once found.
    pub netns: Option<String>,
    /// Its interface holding `addr`.
    pub interface: Option<String>,
}

/// The one line at the end: what is wrong and what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    /// True when no hop failed (and the probe, if run, succeeded).
    pub ok: bool,
    /// The fault, when something is wrong.
    pub fault: Option<Fault>,
    /// The id of the hop it comes from.
    pub hop: Option<String>,
    /// One sentence.
    pub line: String,
    /// The command that fixes it.
    pub fix: Option<Fix>,
}

/// Everything doctor found for one path.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The host namespace examined.
    pub host_netns: String,
    /// The source, as given.
    pub from: String,
    /// The packet as it reaches the host.
    pub packet: Option<Packet>,
    /// Where it goes.
    pub destination: Option<Destination>,
    /// Every hop in path order.
    pub hops: Vec<Hop>,
    /// The verdict.
    pub diagnosis: Diagnosis,
    /// What a real connection did (with `probe`).
    pub probe: Option<probe::ProbeResult>,
}

/// Errors that stop doctor before it can say anything about the path.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// A namespace could not be entered or read.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Reading links or sockets failed.
    #[error("reading {what} in {ns}: {message}")]
    Read {
        /// What was being read.
        what: String,
        /// Which namespace.
        ns: String,
        /// Why.
        message: String,
    },
    /// The request does not say enough.
    #[error("{0}")]
    Usage(String),
}

impl Hop {
    fn new(id: &str, title: &str, verdict: Verdict, summary: impl Into<String>) -> Self {
        Hop {
            id: id.into(),
            title: title.into(),
            verdict,
            summary: summary.into(),
            evidence: Vec::new(),
            fault: None,
            fix: None,
        }
    }

    fn ok(id: &str, title: &str, summary: impl Into<String>) -> Self {
        Self::new(id, title, Verdict::Ok, summary)
    }

    fn fail(id: &str, title: &str, fault: Fault, summary: impl Into<String>) -> Self {
        let mut h = Self::new(id, title, Verdict::Fail, summary);
        h.fault = Some(fault);
        h
    }

    fn warn(id: &str, title: &str, fault: Fault, summary: impl Into<String>) -> Self {
        let mut h = Self::new(id, title, Verdict::Warn, summary);
        h.fault = Some(fault);
        h
    }

    fn with_evidence(mut self, e: impl Into<String>) -> Self {
        self.evidence.push(e.into());
        self
    }

    fn with_fix(mut self, fix: Option<Fix>) -> Self {
        self.fix = fix;
        self
    }
}

/// Quote one argument for a POSIX shell line (only when it needs it).
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Builds [`Fix`]es for one host namespace.
pub(crate) struct Fixer {
    host_name: Option<String>,
    host_path: String,
}

impl Fixer {
    fn fix(&self, summary: &str, argv: &[&str]) -> Fix {
        self.fix_owned(summary, argv.iter().map(|s| s.to_string()).collect(), false)
    }

    fn fix_owned(&self, summary: &str, argv: Vec<String>, background: bool) -> Fix {
        // `ip -n NS ...`, `ip netns exec NS ...` and nsenter name their namespace themselves.
        let self_contained = argv.first().map(String::as_str) == Some("nsenter")
            || (argv.first().map(String::as_str) == Some("ip")
                && (argv.get(1).map(String::as_str) == Some("-n")
                    || (argv.get(1).map(String::as_str) == Some("netns")
                        && argv.get(2).map(String::as_str) == Some("exec"))));
        let mut line: Vec<String> = match &self.host_name {
            _ if self_contained => vec![],
            Some(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.clone()],
            None if self.host_path.is_empty() => vec![],
            None => vec!["nsenter".into(), format!("--net={}", self.host_path)],
        };
        line.extend(argv.iter().cloned());
        let mut command = line
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        if background {
            command.push_str(" &");
        }
        Fix {
            summary: summary.into(),
            argv,
            command,
            background,
        }
    }

    /// argv that runs `cmd` inside namespace `ns` from the host namespace.
    fn in_ns(ns: &NsFacts, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match &ns.name {
            Some(n) if cmd.first() == Some(&"ip") => {
                let mut v = vec!["ip".to_string(), "-n".into(), n.clone()];
                v.extend(cmd[1..].iter().map(|s| s.to_string()));
                return v;
            }
            Some(n) => vec!["ip".into(), "netns".into(), "exec".into(), n.clone()],
            None => vec!["nsenter".into(), format!("--net={}", ns.path)],
        };
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }
}

/// Run every check for `req` and return the report.
pub fn diagnose(req: &Request) -> Result<Report, DoctorError> {
    // Probing from outside with no client given: attach a throwaway client namespace first,
    // so the analysis follows the very packet the probe will send.
    let temp = match (&req.from, req.probe) {
        (Source::Outside(None), true) => probe::TempClient::attach(&req.host).ok(),
        _ => None,
    };
    let host = HostFacts::read(&req.host)?;
    let fixer = Fixer {
        host_name: req.host_name.clone(),
        host_path: if req.host_name.is_some() || is_current(&req.host) {
            String::new()
        } else {
            req.host.path().display().to_string()
        },
    };
    let fw = rules::load(&req.host);
    let all_ns = discover(DiscoverOptions {
        skip_interfaces: true,
        skip_docker: false,
    });

    let mut hops = Vec::new();
    let src_ns = match (&req.from, &temp) {
        (Source::Outside(Some(ns)) | Source::Container(ns), _) => Some(NsFacts::read(ns, &all_ns)?),
        (Source::Outside(None), Some(t)) => {
            let mut f = NsFacts::read(&t.ns, &all_ns)?;
            f.label = t.describe();
            Some(f)
        }
        _ => None,
    };
    let mut packet = build_packet(req, &host, src_ns.as_ref(), &all_ns)?;

    // The port: given, or every DNAT to the container (first one followed).
    let container_ns = match &req.container {
        Some(ns) => Some(NsFacts::read(ns, &all_ns)?),
        None => None,
    };

    // 1. Who receives the connection.
    let (dest, receiver_hop, walk) =
        receiver(req, &host, &fw, &mut packet, container_ns.as_ref(), &fixer);
    hops.push(receiver_hop);
    if fw.split_backends() {
        hops.push(
            Hop::warn(
                "backends",
                "rule backends",
                Fault::SplitBackends,
                "rules are split between iptables-legacy and iptables-nft: both run, the other tool does not show them",
            )
            .with_evidence(fw.source.clone()),
        );
    }
    let mut report = Report {
        host_netns: req.host.label().to_string(),
        from: req.from.describe(),
        packet: Some(packet.clone()),
        destination: dest.clone(),
        hops,
        diagnosis: Diagnosis {
            ok: true,
            fault: None,
            hop: None,
            line: String::new(),
            fix: None,
        },
        probe: None,
    };
    if let Some(mut dest) = dest {
        let forwarded = dest.via == "dnat" && packet.hook == "prerouting";
        path_checks(
            &PathCtx {
                req,
                host: &host,
                fw: &fw,
                walk: walk.as_ref(),
                packet: &packet,
                fixer: &fixer,
                all_ns: &all_ns,
                forwarded,
            },
            &mut dest,
            &mut report.hops,
        )?;
        report.destination = Some(dest);
    }
    if req.probe {
        report.probe = Some(probe::run(req, &packet, src_ns.as_ref()));
        drop(temp);
    }
    report.diagnosis = conclude(&report);
    Ok(report)
}

fn is_current(ns: &NetNs) -> bool {
    NetNs::current().map(|c| c.id() == ns.id()).unwrap_or(false)
}

/// The packet as it reaches the host, from the source and what was asked.
fn build_packet(
    req: &Request,
    host: &HostFacts,
    src_ns: Option<&NsFacts>,
    all_ns: &[NamespaceInfo],
) -> Result<Packet, DoctorError> {
    // With a container target the published port is found later from its DNAT rule.
    let port = if req.container.is_some() {
        Some(0)
    } else {
        req.port
    }
    .ok_or_else(|| DoctorError::Usage("say which port: nettool doctor PORT".into()))?;
    let v4 = |a: &&Address| a.address.is_ipv4() && !a.address.is_loopback();
    Ok(match &req.from {
        Source::Localhost => Packet {
            proto: req.proto,
            src: req.src.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            dst: req.dst.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            dport: port,
            iif: None,
            hook: "output".into(),
            src_assumed: false,
        },
        Source::Host => {
            let dst = req
                .dst
                .or_else(|| host.primary_address())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            Packet {
                proto: req.proto,
                src: req.src.unwrap_or(dst),
                dst,
                dport: port,
                iif: None,
                hook: "output".into(),
                src_assumed: false,
            }
        }
        Source::Outside(_) => {
            // With a client namespace: its veth into the host tells the interface and addresses.
            let mut iif = req.iif.clone();
            let mut dst = req.dst;
            let mut src = req.src;
            if let Some(c) = src_ns {
                if let Some((host_if, client_addr)) = c.link_into(&req.host, &host.links, all_ns) {
                    iif.get_or_insert(host_if.name.clone());
                    if dst.is_none() {
                        dst = host
                            .addresses
                            .iter()
                            .filter(v4)
                            .find(|a| a.index == host_if.index)
                            .map(|a| a.address);
                    }
                    src = src.or(client_addr);
                }
            }
            let ext = host.external_link();
            if iif.is_none() {
                iif = ext.map(|l| l.name.clone());
            }
            let dst = dst
                .or_else(|| {
                    ext.and_then(|l| {
                        host.addresses
                            .iter()
                            .filter(v4)
                            .find(|a| a.index == l.index)
                            .map(|a| a.address)
                    })
                })
                .or_else(|| host.primary_address())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            Packet {
                proto: req.proto,
                src_assumed: src.is_none(),
                src: src.unwrap_or(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))),
                dst,
                dport: port,
                iif,
                hook: "prerouting".into(),
            }
        }
        Source::Container(_) => {
            let c = src_ns.ok_or_else(|| DoctorError::Usage("no source namespace".into()))?;
            let (host_if, client_addr) =
                c.link_into(&req.host, &host.links, all_ns).ok_or_else(|| {
                    DoctorError::Usage(format!(
                        "the source namespace {} has no veth into the host namespace {}",
                        c.label,
                        req.host.label()
                    ))
                })?;
            // The container reaches the host through the bridge its veth is a port of.
            let bridge = host_if
                .master
                .and_then(|m| host.links.iter().find(|l| l.index == m))
                .cloned()
                .unwrap_or(host_if);
            let gw = host
                .addresses
                .iter()
                .filter(v4)
                .find(|a| a.index == bridge.index)
                .map(|a| a.address);
            Packet {
                proto: req.proto,
                src: req
                    .src
                    .or(client_addr)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                dst: req
                    .dst
                    .or(gw)
                    .or_else(|| host.primary_address())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                dport: port,
                iif: Some(bridge.name.clone()),
                hook: "prerouting".into(),
                src_assumed: false,
            }
        }
    })
}

/// Hop 1: a DNAT rule or a listening process.
fn receiver(
    req: &Request,
    host: &HostFacts,
    fw: &rules::Firewall,
    packet: &mut Packet,
    container: Option<&NsFacts>,
    fixer: &Fixer,
) -> (Option<Destination>, Hop, Option<Walk>) {
    const ID: &str = "receiver";
    const TITLE: &str = "who receives it";
    // `doctor container:web[:PORT]`: the first port published to that container (to PORT).
    if let Some(c) = container {
        let addrs: Vec<IpAddr> = c.addresses.iter().map(|a| a.address).collect();
        match fw.published_port_of(packet.proto, &addrs, req.port) {
            Some(p) => packet.dport = p,
            None => {
                return (
                    None,
                    Hop::fail(
                        ID,
                        TITLE,
                        Fault::NoReceiver,
                        match req.port {
                            Some(p) => format!("no DNAT rule publishes port {p} of {}", c.label),
                            None => format!("no DNAT rule publishes a port of {}", c.label),
                        },
                    )
                    .with_evidence(format!("addresses: {}", c.address_list())),
                    None,
                )
            }
        }
    }
    let packet = &*packet;
    let walk = fw.walk(packet);
    if let Some(rule) = fw.dnat_in(&walk, packet) {
        let dest = Destination {
            addr: rule.to_addr,
            port: rule.to_port.unwrap_or(packet.dport),
            via: "dnat".into(),
            rule: Some(rule.clone()),
            receiver: None,
            netns: None,
            interface: None,
        };
        let hop = Hop::ok(
            ID,
            TITLE,
            format!(
                "DNAT in {} rewrites {}:{} to {}",
                rule.chain,
                packet.dst,
                packet.dport,
                SocketAddr::new(dest.addr, dest.port)
            ),
        )
        .with_evidence(format!(
            "{} (table {}, {})",
            rule.text, rule.table, rule.backend
        ));
        return (Some(dest), hop, Some(walk));
    }
    // No DNAT for this packet: a socket on the host gets it, if one listens.
    let listener = host.listeners.iter().find(|s| {
        s.proto == packet.proto
            && s.local.port() == packet.dport
            && (s.local.ip().is_unspecified() || s.local.ip() == packet.dst)
    });
    if let Some(sock) = listener {
        let owner = sock.owners.first().cloned();
        let proxied = owner
            .as_ref()
            .and_then(|o| facts::proxy_target(o.pid, packet.dport));
        let who = owner
            .as_ref()
            .map(|o| format!("{} (pid {})", o.comm, o.pid))
            .unwrap_or_else(|| "a socket with no visible owner".into());
        let mut hop = Hop::ok(
            ID,
            TITLE,
            match &proxied {
                Some(t) => format!("{who} listens on {} and proxies to {t}", sock.local),
                None => format!("{who} listens on {}", sock.local),
            },
        )
        .with_evidence(format!(
            "{} {} {} owners {}",
            sock.proto,
            sock.state,
            sock.local,
            owners_text(&sock.owners)
        ));
        if fw.has_dnat_for_port(packet.proto, packet.dport) {
            hop.evidence.push(format!(
                "a DNAT rule for {}/{} exists but does not match this packet ({} hook, from {}): {}",
                packet.proto, packet.dport, packet.hook, packet.src, walk.summary
            ));
        }
        let dest = match proxied {
            Some(t) => Destination {
                addr: t.ip(),
                port: t.port(),
                via: "proxy".into(),
                rule: None,
                receiver: owner,
                netns: None,
                interface: None,
            },
            None => Destination {
                // A wildcard listener answers on the address the client used.
                addr: if sock.local.ip().is_unspecified() {
                    packet.dst
                } else {
                    sock.local.ip()
                },
                port: sock.local.port(),
                via: "local".into(),
                rule: None,
                receiver: owner,
                netns: Some(req.host.label().to_string()),
                interface: None,
            },
        };
        return (Some(dest), hop, Some(walk));
    }
    let mut hop = Hop::fail(
        ID,
        TITLE,
        Fault::NoReceiver,
        format!(
            "nothing receives {}/{} from {}: no DNAT rule matches and no process listens on the host",
            packet.proto,
            packet.dport,
            req.from.describe()
        ),
    );
    hop.evidence.push(format!("walk: {}", walk.summary));
    if fw.has_dnat_for_port(packet.proto, packet.dport) {
        hop.evidence.push(format!(
            "a DNAT rule publishes {}/{} but does not match this packet",
            packet.proto, packet.dport
        ));
        if matches!(req.from, Source::Localhost) {
            hop.evidence.push(
                "Docker-style rules leave localhost (! -d 127.0.0.0/8) to a userland proxy, and none runs"
                    .into(),
            );
            // Start the proxy the rules expect, to where the DNAT rule sends everyone else.
            if let Some((addr, port)) = fw.dnat_target_for_port(packet.proto, packet.dport) {
                let to = SocketAddr::new(addr, port.unwrap_or(packet.dport));
                hop.fix = Some(fixer.fix_owned(
                    &format!(
                        "run the userland proxy for localhost:{} to {to}",
                        packet.dport
                    ),
                    vec![
                        facts::self_exe(),
                        "proxy".into(),
                        "--map".into(),
                        format!("{}:127.0.0.1:{}={to}", packet.proto, packet.dport),
                    ],
                    true,
                ));
            }
        }
    }
    if let Some(e) = &fw.error {
        hop.evidence.push(format!("rules not read: {e}"));
    }
    (None, hop, Some(walk))
}

fn owners_text(o: &[Owner]) -> String {
    if o.is_empty() {
        return "-".into();
    }
    o.iter()
        .map(|o| format!("{}/{}", o.pid, o.comm))
        .collect::<Vec<_>>()
        .join(",")
}

struct PathCtx<'a> {
    req: &'a Request,
    host: &'a HostFacts,
    fw: &'a rules::Firewall,
    walk: Option<&'a Walk>,
    packet: &'a Packet,
    fixer: &'a Fixer,
    all_ns: &'a [NamespaceInfo],
    forwarded: bool,
}

/// Hops 2..: kernel switches, firewall, route, bridge, veth, target, service, conntrack.
fn path_checks(
    cx: &PathCtx,
    dest: &mut Destination,
    hops: &mut Vec<Hop>,
) -> Result<(), DoctorError> {
    let host = cx.host;
    let packet = cx.packet;
    // The route to the rewritten destination (as the host itself sees it).
    let route = host.route_get(&cx.req.host, dest.addr, None);

    // Kernel switches.
    if cx.forwarded {
        let v = host.sysctl("net.ipv4.ip_forward");
        if v.as_deref() == Some("1") {
            hops.push(Hop::ok(
                "ip_forward",
                "ip_forward",
                "net.ipv4.ip_forward = 1",
            ));
        } else {
            hops.push(
                Hop::fail(
                    "ip_forward",
                    "ip_forward",
                    Fault::IpForwardOff,
                    format!(
                        "net.ipv4.ip_forward = {}: the host does not forward the DNATed packet to {}",
                        v.as_deref().unwrap_or("?"),
                        dest.addr
                    ),
                )
                .with_fix(Some(cx.fixer.fix(
                    "turn forwarding on",
                    &["sysctl", "-w", "net.ipv4.ip_forward=1"],
                ))),
            );
        }
        if let Some(iif) = &packet.iif {
            hops.push(rp_filter_hop(cx, iif));
        }
    }
    let out_if = route
        .as_ref()
        .ok()
        .and_then(|r| r.oif)
        .and_then(|i| host.links.iter().find(|l| l.index == i));
    if dest.via == "dnat" && packet.hook == "output" && packet.dst.is_loopback() {
        // A localhost connection rewritten to a container leaves with source 127.0.0.1:
        // the kernel drops it as martian unless route_localnet is on for the output interface.
        let dev = out_if
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "all".into());
        let all = host.sysctl("net.ipv4.conf.all.route_localnet");
        let on_dev = host.sysctl(&format!("net.ipv4.conf.{dev}.route_localnet"));
        let on = all.as_deref() == Some("1") || on_dev.as_deref() == Some("1");
        let evidence = format!(
            "net.ipv4.conf.all.route_localnet = {}, net.ipv4.conf.{dev}.route_localnet = {}",
            all.as_deref().unwrap_or("?"),
            on_dev.as_deref().unwrap_or("?")
        );
        if on {
            hops.push(
                Hop::ok("route_localnet", "route_localnet", format!("on for {dev}"))
                    .with_evidence(evidence),
            );
        } else {
            hops.push(
                Hop::fail(
                    "route_localnet",
                    "route_localnet",
                    Fault::RouteLocalnetOff,
                    format!(
                        "127.0.0.1:{} is DNATed to {} but route_localnet is off on {dev}: the kernel drops packets from 127.0.0.1 leaving {dev}",
                        packet.dport, dest.addr
                    ),
                )
                .with_evidence(evidence)
                .with_fix(Some(cx.fixer.fix_owned(
                    &format!("let 127.0.0.1 be routed out of {dev}"),
                    vec![
                        "sysctl".into(),
                        "-w".into(),
                        format!("net.ipv4.conf.{dev}.route_localnet=1"),
                    ],
                    false,
                ))),
            );
        }
    }

    // A container reaching a published port of a neighbour on its own bridge: the DNATed
    // packet is routed back out of the bridge, but the answer is bridged straight to the
    // client, which drops it (wrong source) unless br_netfilter un-NATs bridged traffic.
    if let (Source::Container(_), true, Some(br)) = (&cx.req.from, cx.forwarded, out_if) {
        if packet.iif.as_deref() == Some(br.name.as_str()) && br.kind == "bridge" {
            hops.push(br_netfilter_hop(cx, &br.name));
        }
    }

    // Firewall: the filter hooks the packet crosses.
    if let Some(w) = cx.walk {
        hops.extend(rules::firewall_hops(cx.fw, w, cx.forwarded, cx.fixer));
    }

    // Route.
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            hops.push(
                Hop::fail(
                    "route",
                    "route",
                    Fault::NoRoute,
                    format!("no route to {} on the host: {e}", dest.addr),
                )
                .with_evidence(format!("ip route get {}", dest.addr)),
            );
            return Ok(());
        }
    };
    let out_if = route
        .oif
        .and_then(|i| host.links.iter().find(|l| l.index == i))
        .cloned();
    let route_text = format!(
        "ip route get {}: {} dev {}{}{}",
        dest.addr,
        route.kind,
        out_if.as_ref().map(|l| l.name.as_str()).unwrap_or("?"),
        route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default(),
        route
            .prefsrc
            .map(|s| format!(" src {s}"))
            .unwrap_or_default()
    );
    if route.kind == "local" || dest.via == "local" {
        hops.push(
            Hop::ok(
                "route",
                "route",
                format!("{} is an address of the host", dest.addr),
            )
            .with_evidence(route_text),
        );
        service_hop(
            cx,
            &NsFacts::read(&cx.req.host, cx.all_ns)?,
            dest,
            hops,
            None,
        );
        return Ok(());
    }
    if route.kind != "unicast" {
        hops.push(
            Hop::fail(
                "route",
                "route",
                Fault::NoRoute,
                format!("the route to {} is of type {}", dest.addr, route.kind),
            )
            .with_evidence(route_text),
        );
        return Ok(());
    }
    let Some(out_if) = out_if else {
        hops.push(
            Hop::fail(
                "route",
                "route",
                Fault::NoRoute,
                "the route has no output interface",
            )
            .with_evidence(route_text),
        );
        return Ok(());
    };
    hops.push(
        Hop::ok(
            "route",
            "route",
            format!("{} via {} ({})", dest.addr, out_if.name, out_if.kind),
        )
        .with_evidence(route_text),
    );

    // Bridge (when the route leaves through one).
    let bridge = (out_if.kind == "bridge").then(|| out_if.clone());
    if let Some(br) = &bridge {
        let addrs: Vec<&Address> = host
            .addresses
            .iter()
            .filter(|a| a.index == br.index)
            .collect();
        let in_subnet = addrs.iter().find(|a| same_subnet(a, dest.addr));
        let state = format!(
            "{}: admin {}, oper {}, mtu {}, addresses {}",
            br.name,
            if br.admin_up { "up" } else { "down" },
            br.oper_state,
            br.mtu,
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs
                    .iter()
                    .map(|a| format!("{}/{}", a.address, a.prefix_len))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
        if !br.admin_up {
            hops.push(
                Hop::fail(
                    "bridge",
                    "bridge",
                    Fault::BridgeDown,
                    format!("bridge {} is down", br.name),
                )
                .with_evidence(state)
                .with_fix(Some(cx.fixer.fix(
                    &format!("bring {} up", br.name),
                    &["ip", "link", "set", &br.name, "up"],
                ))),
            );
        } else if in_subnet.is_none() {
            hops.push(
                Hop::warn(
                    "bridge",
                    "bridge",
                    Fault::NoHostAddress,
                    format!(
                        "{} is up but the host has no address in {}'s subnet on it",
                        br.name, dest.addr
                    ),
                )
                .with_evidence(state),
            );
        } else {
            let a = in_subnet.expect("checked");
            hops.push(
                Hop::ok(
                    "bridge",
                    "bridge",
                    format!(
                        "{} up, host address {}/{} covers {}",
                        br.name, a.address, a.prefix_len, dest.addr
                    ),
                )
                .with_evidence(state),
            );
        }
    }

    // The namespace that holds the destination, and the veth into it.
    let Some(target) = find_target(cx, dest.addr, &out_if)? else {
        hops.push(Hop::fail(
            "target",
            "target namespace",
            Fault::TargetNotFound,
            format!(
                "no namespace behind {} holds {}: the container is gone or has another address",
                out_if.name, dest.addr
            ),
        ));
        return Ok(());
    };
    dest.netns = Some(target.ns.label.clone());
    dest.interface = target.inner.as_ref().map(|l| l.name.clone());
    veth_hops(cx, &target, bridge.as_ref(), hops);
    if dest.via == "dnat" {
        if let Some(h) = return_route_hop(cx, &target, bridge.as_ref()) {
            hops.push(h);
        }
    }
    service_hop(cx, &target.ns, dest, hops, target.inner.as_ref());
    if packet.proto == Proto::Udp {
        hops.push(rules::conntrack_hop(&cx.req.host, packet, dest, cx.fixer));
    }
    Ok(())
}

fn same_subnet(a: &Address, ip: IpAddr) -> bool {
    ipnet::IpNet::new(a.address, a.prefix_len)
        .map(|n| n.contains(&ip))
        .unwrap_or(false)
}

fn br_netfilter_hop(cx: &PathCtx, bridge: &str) -> Hop {
    const NAME: &str = "net.bridge.bridge-nf-call-iptables";
    let v = cx.host.sysctl(NAME);
    let evidence = format!(
        "{NAME} = {} (client and destination are both on {bridge})",
        v.as_deref().unwrap_or("absent: br_netfilter not loaded")
    );
    match v.as_deref() {
        Some("1") => Hop::ok(
            "br_netfilter",
            "br_netfilter",
            "on: answers bridged between containers are un-NATed",
        )
        .with_evidence(evidence),
        Some(_) => Hop::fail(
            "br_netfilter",
            "br_netfilter",
            Fault::BrNetfilter,
            format!(
                "{NAME} is off: the answer is bridged on {bridge} straight to the client with the container's address, and the client drops it"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix(
            "pass bridged IPv4 traffic through iptables/conntrack",
            &["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1"],
        ))),
        None => Hop::fail(
            "br_netfilter",
            "br_netfilter",
            Fault::BrNetfilter,
            format!(
                "br_netfilter is not loaded: answers bridged on {bridge} skip conntrack and reach the client un-NATed"
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix(
            "load br_netfilter (machine-wide), then check the sysctl",
            &["modprobe", "br_netfilter"],
        ))),
    }
}

fn rp_filter_hop(cx: &PathCtx, iif: &str) -> Hop {
    let host = cx.host;
    let all = host.sysctl("net.ipv4.conf.all.rp_filter");
    let dev = host.sysctl(&format!("net.ipv4.conf.{iif}.rp_filter"));
    // The kernel uses the larger of all and the interface's value.
    let eff = all
        .as_deref()
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(0)
        .max(
            dev.as_deref()
                .and_then(|v| v.parse::<u8>().ok())
                .unwrap_or(0),
        );
    let evidence = format!(
        "net.ipv4.conf.all.rp_filter = {}, net.ipv4.conf.{iif}.rp_filter = {}",
        all.as_deref().unwrap_or("?"),
        dev.as_deref().unwrap_or("?")
    );
    if eff != 1 {
        return Hop::ok(
            "rp_filter",
            "rp_filter",
            format!("rp_filter {eff} on {iif}: no strict reverse-path check"),
        )
        .with_evidence(evidence);
    }
    // Strict: the route back to the source must leave through the interface it came in on.
    let back = host.route_get(&cx.req.host, cx.packet.src, None);
    let back_if = back
        .as_ref()
        .ok()
        .and_then(|r| r.oif)
        .and_then(|i| host.links.iter().find(|l| l.index == i))
        .map(|l| l.name.clone());
    if back_if.as_deref() == Some(iif) {
        Hop::ok(
            "rp_filter",
            "rp_filter",
            format!(
                "strict, and the route back to {} leaves via {iif}",
                cx.packet.src
            ),
        )
        .with_evidence(evidence)
    } else if cx.packet.src_assumed {
        Hop::warn(
            "rp_filter",
            "rp_filter",
            Fault::RpFilter,
            format!(
                "strict rp_filter on {iif}: a client at {} would be dropped (no route back through {iif}); give the real client with --from outside:NETNS or --packet",
                cx.packet.src
            ),
        )
        .with_evidence(evidence)
    } else {
        Hop::fail(
            "rp_filter",
            "rp_filter",
            Fault::RpFilter,
            format!(
                "strict rp_filter on {iif} drops packets from {}: the route back leaves via {}",
                cx.packet.src,
                back_if.as_deref().unwrap_or("nowhere")
            ),
        )
        .with_evidence(evidence)
        .with_fix(Some(cx.fixer.fix_owned(
            &format!("make reverse-path filtering loose on {iif}"),
            vec![
                "sysctl".into(),
                "-w".into(),
                "net.ipv4.conf.all.rp_filter=2".into(),
                format!("net.ipv4.conf.{iif}.rp_filter=2"),
            ],
            false,
        )))
    }
}

/// The namespace holding the destination and its veth into the host.
struct Target {
    ns: NsFacts,
    /// The interface in the target namespace that holds the address.
    inner: Option<Link>,
    /// The host end of its veth.
    outer: Option<Link>,
}

fn find_target(cx: &PathCtx, addr: IpAddr, out_if: &Link) -> Result<Option<Target>, DoctorError> {
    let host_id = cx.req.host.id();
    let host_info: Vec<NamespaceInfo> = cx
        .all_ns
        .iter()
        .filter(|n| n.id == host_id)
        .cloned()
        .collect();
    let mut fallback = None;
    let candidates: Vec<&NamespaceInfo> = match &cx.req.container {
        Some(c) => cx.all_ns.iter().filter(|n| n.id == c.id()).collect(),
        None => cx.all_ns.iter().filter(|n| n.id != host_id).collect(),
    };
    for info in candidates {
        let Ok(ns) = info.open() else { continue };
        let Ok(Ok(addrs)) =
            ns.run(|| crate::netns::links::Rtnl::open().and_then(|mut r| r.addresses()))
        else {
            continue;
        };
        let Some(a) = addrs.iter().find(|a| a.address == addr) else {
            continue;
        };
        let facts = NsFacts::read(&ns, cx.all_ns)?;
        let inner = facts.links.iter().find(|l| l.index == a.index).cloned();
        // Several namespaces may hold the same address (other labs): the one whose veth
        // ends in this host, on the output interface, is the one.
        let peers = veth_peers(&ns, &host_info).unwrap_or_default();
        let outer = peers
            .iter()
            .find(|p| p.local_index == a.index && p.peer_ns == Some(host_id))
            .and_then(|p| cx.host.links.iter().find(|l| l.index == p.peer_index))
            .cloned();
        let t = Target {
            ns: facts,
            inner,
            outer: outer.clone(),
        };
        match outer {
            Some(o) if o.master == Some(out_if.index) || o.index == out_if.index => {
                return Ok(Some(t))
            }
            Some(_) => fallback = Some(t),
            None if fallback.is_none() && cx.req.container.is_some() => fallback = Some(t),
            None => {}
        }
    }
    Ok(fallback)
}

fn link_state(l: &Link) -> String {
    format!(
        "{}: admin {}, oper {}, mtu {}",
        l.name,
        if l.admin_up { "up" } else { "down" },
        l.oper_state,
        l.mtu
    )
}

fn veth_hops(cx: &PathCtx, t: &Target, bridge: Option<&Link>, hops: &mut Vec<Hop>) {
    let (Some(inner), Some(outer)) = (&t.inner, &t.outer) else {
        hops.push(Hop::warn(
            "veth",
            "veth",
            Fault::TargetNotFound,
            format!(
                "{} holds the address but no veth of it ends in the host namespace",
                t.ns.label
            ),
        ));
        return;
    };
    let ev_outer = format!("host end {}", link_state(outer));
    let ev_inner = format!("{} end {}", t.ns.label, link_state(inner));
    let title = "veth";
    if !outer.admin_up {
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!(
                    "the host end {} of the veth to {} is down",
                    outer.name, t.ns.label
                ),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner)
            .with_fix(Some(cx.fixer.fix(
                &format!("bring {} up", outer.name),
                &["ip", "link", "set", &outer.name, "up"],
            ))),
        );
    } else if !inner.admin_up {
        let argv = Fixer::in_ns(&t.ns, &["ip", "link", "set", &inner.name, "up"]);
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!("{} inside {} is down", inner.name, t.ns.label),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner)
            .with_fix(Some(cx.fixer.fix_owned(
                &format!("bring {} up inside {}", inner.name, t.ns.label),
                argv,
                false,
            ))),
        );
    } else if bridge.is_some_and(|b| outer.master != Some(b.index)) {
        let b = bridge.expect("checked");
        hops.push(
            Hop::fail(
                "veth",
                title,
                Fault::VethDown,
                format!("{} is not a port of {}", outer.name, b.name),
            )
            .with_evidence(ev_outer)
            .with_fix(Some(cx.fixer.fix(
                &format!("attach {} to {}", outer.name, b.name),
                &["ip", "link", "set", &outer.name, "master", &b.name],
            ))),
        );
    } else {
        hops.push(
            Hop::ok(
                "veth",
                title,
                format!(
                    "{} (host) <-> {} ({}) both up",
                    outer.name, inner.name, t.ns.label
                ),
            )
            .with_evidence(ev_outer)
            .with_evidence(ev_inner),
        );
    }

    // MTU: both ends of the veth and the bridge should agree; the larger end loses packets.
    let mut mtus = vec![
        (outer.name.clone(), outer.mtu),
        (inner.name.clone(), inner.mtu),
    ];
    if let Some(b) = bridge {
        mtus.push((b.name.clone(), b.mtu));
    }
    let min = mtus.iter().map(|m| m.1).min().unwrap_or(0);
    let evidence = mtus
        .iter()
        .map(|(n, m)| format!("{n} mtu {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    if inner.mtu != outer.mtu {
        let (summary, fix) = if inner.mtu > outer.mtu {
            (
                format!(
                    "{} inside {} has mtu {} but the host end {} has {}: large packets from the container are dropped",
                    inner.name, t.ns.label, inner.mtu, outer.name, outer.mtu
                ),
                cx.fixer.fix_owned(
                    &format!("set {} inside {} to mtu {}", inner.name, t.ns.label, outer.mtu),
                    Fixer::in_ns(
                        &t.ns,
                        &["ip", "link", "set", &inner.name, "mtu", &outer.mtu.to_string()],
                    ),
                    false,
                ),
            )
        } else {
            (
                format!(
                    "the host end {} has mtu {} but {} inside {} has {}: large packets to the container are dropped",
                    outer.name, outer.mtu, inner.name, t.ns.label, inner.mtu
                ),
                cx.fixer.fix_owned(
                    &format!("set {} to mtu {}", outer.name, inner.mtu),
                    vec![
                        "ip".into(),
                        "link".into(),
                        "set".into(),
                        outer.name.clone(),
                        "mtu".into(),
                        inner.mtu.to_string(),
                    ],
                    false,
                ),
            )
        };
        hops.push(
            Hop::fail("mtu", "mtu", Fault::MtuMismatch, summary)
                .with_evidence(evidence)
                .with_fix(Some(fix)),
        );
    } else if mtus.iter().any(|m| m.1 != min) {
        hops.push(
            Hop::warn(
                "mtu",
                "mtu",
                Fault::MtuMismatch,
                format!("the veth has mtu {} but the bridge differs", inner.mtu),
            )
            .with_evidence(evidence),
        );
    } else {
        hops.push(Hop::ok("mtu", "mtu", format!("{min} on every hop")).with_evidence(evidence));
    }
}

/// Can the target answer? Its route back to the source as it arrives there (after any SNAT).
fn return_route_hop(cx: &PathCtx, t: &Target, bridge: Option<&Link>) -> Option<Hop> {
    let src = cx.walk.map(|w| w.final_packet.src).unwrap_or(cx.packet.src);
    let ns = t.ns.netns();
    let route = ns
        .run(|| Rtnl::open().and_then(|mut r| r.route_get(src, None, None)))
        .ok()?;
    match route {
        Ok(r) => {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            let dev = r
                .oif
                .and_then(|i| t.ns.links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_else(|| "?".into());
            Some(Hop::ok(
                "return",
                "route back",
                format!("{} answers {src}{via} dev {dev}", t.ns.label),
            ))
        }
        Err(e) => {
            // The usual fix: a default route through the host's address on the bridge.
            let inner = t.inner.as_ref()?;
            let gw = bridge.and_then(|b| {
                cx.host
                    .addresses
                    .iter()
                    .filter(|a| a.index == b.index && a.address.is_ipv4())
                    .find(|a| {
                        t.ns.addresses
                            .iter()
                            .any(|c| c.index == inner.index && same_subnet(a, c.address))
                    })
                    .map(|a| a.address.to_string())
            });
            let fix = gw.map(|gw| {
                cx.fixer.fix_owned(
                    &format!(
                        "give {} a default route through the host ({gw})",
                        t.ns.label
                    ),
                    Fixer::in_ns(
                        &t.ns,
                        &[
                            "ip",
                            "route",
                            "add",
                            "default",
                            "via",
                            &gw,
                            "dev",
                            &inner.name,
                        ],
                    ),
                    false,
                )
            });
            Some(
                Hop::fail(
                    "return",
                    "route back",
                    Fault::NoReturnRoute,
                    format!(
                        "{} has no route back to {src}: its answers are never sent",
                        t.ns.label
                    ),
                )
                .with_evidence(format!("ip route get {src} in {}: {e}", t.ns.label))
                .with_fix(fix),
            )
        }
    }
}

/// Does anything listen on the destination port inside `ns`?
fn service_hop(
    cx: &PathCtx,
    ns: &NsFacts,
    dest: &Destination,
    hops: &mut Vec<Hop>,
    _inner: Option<&Link>,
) {
    let proto = cx.packet.proto;
    let matches_addr = |s: &Socket| s.local.ip().is_unspecified() || s.local.ip() == dest.addr;
    let listening: Vec<&Socket> = ns.listeners.iter().filter(|s| s.proto == proto).collect();
    if let Some(s) = listening
        .iter()
        .find(|s| s.local.port() == dest.port && matches_addr(s))
    {
        hops.push(
            Hop::ok(
                "service",
                "service",
                format!(
                    "{} listens on {} in {}",
                    s.owners
                        .first()
                        .map(|o| format!("{} (pid {})", o.comm, o.pid))
                        .unwrap_or_else(|| "a socket".into()),
                    s.local,
                    ns.label
                ),
            )
            .with_evidence(format!(
                "{} {} {} owners {}",
                s.proto,
                s.state,
                s.local,
                owners_text(&s.owners)
            )),
        );
        return;
    }
    let evidence: Vec<String> = listening
        .iter()
        .map(|s| {
            format!(
                "{} {} {} owners {}",
                s.proto,
                s.state,
                s.local,
                owners_text(&s.owners)
            )
        })
        .collect();
    // Something listens on another port: when a DNAT rule chose the port, the rule is wrong.
    let others: Vec<&&Socket> = listening
        .iter()
        .filter(|s| matches_addr(s) && !s.local.ip().is_loopback())
        .collect();
    if let (Some(rule), [only]) = (&dest.rule, others.as_slice()) {
        let good = only.local.port();
        let fix = rules::dnat_port_fix(rule, dest.addr, good).map(|argv| {
            cx.fixer
                .fix_owned(&format!("point the DNAT rule at port {good}"), argv, false)
        });
        let mut hop = Hop::fail(
            "service",
            "service",
            Fault::DnatWrongPort,
            format!(
                "the DNAT rule sends to port {} but {} listens on {} in {}",
                dest.port,
                only.owners
                    .first()
                    .map(|o| o.comm.clone())
                    .unwrap_or_else(|| "the service".into()),
                good,
                ns.label
            ),
        )
        .with_evidence(rule.text.clone())
        .with_fix(fix);
        hop.evidence.extend(evidence);
        hops.push(hop);
        return;
    }
    // The lab's own `run` command when the lab says what the container runs; otherwise a
    // built-in stand-in that answers, so the path can be proven.
    let (what, cmd) = match facts::lab_of_host(&cx.req.host)
        .and_then(|lab| facts::lab_service_argv(&lab, ns.netns()))
    {
        Some((name, argv)) => (format!("the lab's service of {name}"), argv),
        None => {
            let kind = if proto == Proto::Udp {
                "udp-echo"
            } else {
                "http"
            };
            (
                format!("a stand-in: nettool serve {kind}"),
                vec![
                    facts::self_exe(),
                    "serve".into(),
                    kind.into(),
                    dest.port.to_string(),
                ],
            )
        }
    };
    let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let serve = what;
    let argv = Fixer::in_ns(ns, &cmd_ref);
    let mut hop = Hop::fail(
        "service",
        "service",
        Fault::NotListening,
        format!("nothing listens on {}/{} in {}", proto, dest.port, ns.label),
    )
    .with_fix(Some(cx.fixer.fix_owned(
        &format!(
            "start the service on port {} inside {} (here: {})",
            dest.port, ns.label, serve
        ),
        argv,
        true,
    )));
    if evidence.is_empty() {
        hop.evidence
            .push(format!("no {proto} sockets listen in {}", ns.label));
    }
    hop.evidence.extend(evidence);
    hops.push(hop);
}

/// The one line: the first failing hop in path order, else the probe, else all clear.
fn conclude(r: &Report) -> Diagnosis {
    if let Some(h) = r.hops.iter().find(|h| h.verdict == Verdict::Fail) {
        return Diagnosis {
            ok: false,
            fault: h.fault,
            hop: Some(h.id.clone()),
            line: h.summary.clone(),
            fix: h.fix.clone(),
        };
    }
    if let Some(p) = &r.probe {
        if !p.ok {
            return Diagnosis {
                ok: false,
                fault: Some(Fault::ProbeFailed),
                hop: None,
                line: format!("every hop looks right but the probe failed: {}", p.outcome),
                fix: None,
            };
        }
    }
    let warns = r.hops.iter().filter(|h| h.verdict == Verdict::Warn).count();
    let dest = r
        .destination
        .as_ref()
        .map(|d| {
            format!(
                " to {}{}",
                SocketAddr::new(d.addr, d.port),
                d.netns
                    .as_ref()
                    .map(|n| format!(" in {n}"))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Diagnosis {
        ok: true,
        fault: None,
        hop: None,
        line: format!(
            "all clear: the path from {}{dest} is open{}{}",
            r.from,
            if r.probe.is_some() {
                " and the probe got through"
            } else {
                ""
            },
            if warns > 0 {
                format!(" ({warns} warning(s) above)")
            } else {
                String::new()
            }
        ),
        fix: None,
    }
}
