//! `nettool doctor`: follow a published port from its source to the socket behind it, hop by
//! hop, compare it with what the engine intended, and say what is broken and the command that
//! fixes it.
//!
//! [`diagnose`] reads ONE snapshot of the machine ([`crate::facts`]), runs the probe, and hands
//! both to [`judge`]: every check is a pure function of the snapshot (and of the probe, which
//! is recorded in it), so a recorded snapshot replays to the same [`Report`] with no root.
//! Nothing here prints; `src/cmd/doctor.rs` renders.

mod bound;
mod cni;
pub(crate) mod engine;
mod family;
pub(crate) mod fix;
pub(crate) mod path;
pub(crate) mod probe;
pub(crate) mod receiver;
mod rootless;
pub(crate) mod rules;
pub(crate) mod target;

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::facts::{self, FactsError, From, Question, Reads, Snapshot};
use crate::netns::sockets::{Owner, Proto};
use crate::netns::{NetNs, NetnsError};

pub(crate) use fix::Fix;
use fix::Fixer;

/// How a hop fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
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
pub(crate) enum Fault {
    /// Nothing receives the connection: no DNAT rule matches and no process listens.
    NoReceiver,
    /// The DNAT rule sends to a port nothing listens on, while the service listens on another.
    DnatWrongPort,
    /// A localhost connection is DNATed to a container but route_localnet is 0.
    RouteLocalnetOff,
    /// Forwarded traffic while net.ipv4.ip_forward is 0.
    IpForwardOff,
    /// net.ipv4.ip_forward is 1 but forwarding is off on an interface the connection is routed
    /// in on (the uplink for the client's packets, the bridge or routed veth for the answers).
    InterfaceForwardingOff,
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
    /// The engine's container for this port is not running (exited, created, paused, dead).
    ContainerNotRunning,
    /// The container is running but attached to no network that could carry its port.
    NotOnNetwork,
    /// The port is published on another host address than the one the client uses.
    PublishedElsewhere,
    /// The engine's DNAT rule is missing while a userland proxy or a port reservation
    /// holds the port (clients lose their address, or nothing answers).
    DnatMissing,
    /// A Podman reservation (conmon) holds the port with no DNAT rule in front of it, and
    /// Podman's API could not be asked: a flushed rule cannot be told from a container that is
    /// stopped, paused or disconnected until it can.
    EngineUnreachable,
    /// The service listens on the container's loopback only (or, on the host, a process or
    /// proxy such as socat listens on loopback only for a client of another address).
    ServiceOnLoopback,
    /// A process listens on the port on one specific address that is not the one the client
    /// uses (another address of the host or of the container; not loopback, not a wildcard):
    /// connections to the client's address find nothing.
    ServiceOnOtherAddress,
    /// The service listens on IPv4 only while the port is published over IPv6 too.
    ServiceIpv4Only,
    /// The service listens on IPv6 only (`[::]` with IPV6_V6ONLY, or an IPv6 address) while
    /// the port is published over IPv4.
    ServiceIpv6Only,
    /// A `nettool proxy` holds the port and forwards to a name that does not resolve where
    /// doctor runs: its backend cannot be followed.
    ProxyTargetUnresolved,
}

/// The address family of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// One step of the path with its verdict and the facts behind it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Hop {
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
    /// The path this hop is on, when doctor followed a dual-stack port over both families
    /// (None: the one path, or the engine's intent both paths share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// The proxy this hop is about, when what it does decides the wording (a target name).
    #[serde(skip)]
    pub proxy: Option<crate::facts::proxies::ProxyKind>,
}

/// The IPv6 path of a dual-stack port, followed beside the IPv4 one (its hops are in
/// [`Report::hops`] with family ipv6).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FamilyPath {
    /// The packet over IPv6, as the host first sees it.
    pub packet: Option<Packet>,
    /// Where it goes.
    pub destination: Option<Destination>,
    /// What a real connection over IPv6 did (with `probe`).
    pub probe: Option<facts::ProbeResult>,
}

/// Where the connection starts.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Another machine, arriving on an external interface; with a namespace to probe from.
    Outside(Option<NetNs>),
    /// A process on the host connecting to one of the host's own addresses.
    Host,
    /// A process on the host connecting to 127.0.0.1.
    Localhost,
    /// A process inside this (container) namespace.
    Container(NetNs),
}

impl Source {}

/// What to diagnose.
#[derive(Debug, Clone)]
pub(crate) struct Request {
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
    /// The container as named by the user (`web`), for the report's words.
    pub container_name: Option<String>,
    /// Try the connection for real.
    pub probe: bool,
}

/// The packet doctor follows, as the host first sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Packet {
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
pub(crate) struct Destination {
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
pub(crate) struct Diagnosis {
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
pub(crate) struct Report {
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
    pub probe: Option<facts::ProbeResult>,
    /// The IPv6 path, when the port is published over IPv6 too and the source can use it
    /// (the fields above are then the IPv4 path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyPath>,
    /// What reading the machine cost (namespaces entered, netlink dumps, /proc scans).
    pub reads: Reads,
}

/// Errors that stop doctor before it can say anything about the path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DoctorError {
    /// A namespace could not be entered or read.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The snapshot could not be read, loaded or saved.
    #[error(transparent)]
    Facts(#[from] FactsError),
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
            family: None,
            proxy: None,
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

/// Read the machine once, probe when asked, and judge. Returns the report and the snapshot
/// it was judged on (with the question and the probe recorded in it).
pub(crate) fn diagnose(req: &Request) -> Result<(Report, Snapshot), DoctorError> {
    // Probing from outside with no client given: attach a throwaway client namespace first,
    // so the snapshot holds it and the analysis follows the very packet the probe will send.
    let temp = match (&req.from, req.probe) {
        (Source::Outside(None), true) => probe::TempClient::attach(&req.host).ok(),
        _ => None,
    };
    let mut extra = Vec::new();
    if let Source::Outside(Some(ns)) | Source::Container(ns) = &req.from {
        extra.push(ns.clone());
    }
    extra.extend(req.container.clone());
    extra.extend(temp.as_ref().map(|t| t.ns.clone()));
    let mut snap = facts::read(&facts::ReadOptions {
        host: req.host.clone(),
        extra,
        skip_docker: false,
        // TCP entries too: evidence for a TCP question, judged only for UDP.
        conntrack: true,
    })?;
    let client = match (&req.from, &temp) {
        (Source::Outside(Some(ns)), _) => Some(ns.id()),
        (Source::Outside(None), Some(t)) => {
            if let Some(n) = snap.namespaces.iter_mut().find(|n| n.id == t.ns.id()) {
                n.label = t.describe();
            }
            Some(t.ns.id())
        }
        _ => None,
    };
    let q = Question {
        proto: req.proto,
        port: req.port,
        dst: req.dst,
        src: req.src,
        iif: req.iif.clone(),
        from: match &req.from {
            Source::Localhost => From::Localhost,
            Source::Host => From::Host,
            Source::Outside(_) => From::Outside { client },
            Source::Container(ns) => From::Container { ns: ns.id() },
        },
        container: req.container.as_ref().map(|c| c.id()),
        container_name: req.container_name.clone(),
        host_name: req.host_name.clone(),
        host_path: (req.host_name.is_none() && !is_current(&req.host))
            .then(|| req.host.path().display().to_string()),
    };
    snap.question = Some(q.clone());
    snap.relayed_host = rootless::read_relayed(&snap, &q);
    let mut report = judge(&snap, &q)?;
    if req.probe {
        // Every path followed is probed: over IPv4 and, for a dual-stack port, over IPv6.
        let packets: Vec<(Packet, Option<Destination>)> = report
            .packet
            .iter()
            .map(|p| (p.clone(), report.destination.clone()))
            .chain(report.ipv6.iter().flat_map(|f| {
                f.packet
                    .as_ref()
                    .map(|p| (p.clone(), f.destination.clone()))
            }))
            .collect();
        for (packet, dest) in &packets {
            let r = probe::run(req, packet, &snap, dest.as_ref());
            snap.probes.push(r);
        }
        drop(temp);
        report = judge(&snap, &q)?;
    }
    Ok((report, snap))
}

/// Judge a snapshot: the question recorded in it, as a live run would have.
pub(crate) fn replay(snap: &Snapshot) -> Result<Report, DoctorError> {
    let q = snap.question.clone().ok_or_else(|| {
        DoctorError::Usage("the snapshot records no question (it was not saved by doctor)".into())
    })?;
    judge(snap, &q)
}

/// Every check, as a pure function of the snapshot and the question: the IPv4 path, and the
/// IPv6 path too when the port is published over IPv6 and the source can use it.
pub(crate) fn judge(snap: &Snapshot, q: &Question) -> Result<Report, DoctorError> {
    if let Some(r) = rootless::relayed_container(snap, q) {
        return r;
    }
    let fw = rules::Firewall::from_snapshot(snap);
    match family::families(snap, q, &fw).as_slice() {
        [only] => rootless::through_rootlesskit(snap, judge_path(snap, q, &fw, *only, false)?.0),
        _ => {
            let (r4, stopped) = judge_path(snap, q, &fw, Family::Ipv4, true)?;
            if stopped {
                // The engine's intent failed: that cause is the same for both families.
                return Ok(r4);
            }
            let (r6, _) = judge_path(snap, q, &fw, Family::Ipv6, true)?;
            rootless::through_rootlesskit(snap, family::merge(r4, r6))
        }
    }
}

/// A path's report with its hops in and nothing concluded yet: [`conclude`] makes its
/// diagnosis once no hop is to be added.
fn unconcluded(
    snap: &Snapshot,
    fam: Family,
    from: String,
    packet: Packet,
    destination: Option<Destination>,
    hops: Vec<Hop>,
) -> Report {
    Report {
        host_netns: snap.host().label.clone(),
        from,
        packet: Some(packet),
        destination,
        hops,
        diagnosis: Diagnosis {
            ok: true,
            fault: None,
            hop: None,
            line: String::new(),
            fix: None,
        },
        probe: probe_of(snap, fam),
        ipv6: None,
        reads: snap.meta.reads.clone(),
    }
}

/// The last probe made over `fam` (its target's family).
fn probe_of(snap: &Snapshot, fam: Family) -> Option<facts::ProbeResult> {
    snap.probes
        .iter()
        .rev()
        .find(|p| {
            p.target
                .parse::<SocketAddr>()
                .map(|a| a.is_ipv6() == (fam == Family::Ipv6))
                .unwrap_or(fam == Family::Ipv4)
        })
        .cloned()
}

/// One path (one address family). True with it when the engine's intent named the cause
/// and the path was not followed further. `both`: the other family is followed too (the
/// engine's hop, shared by the two, then shows the bindings of each).
fn judge_path(
    snap: &Snapshot,
    q: &Question,
    fw: &rules::Firewall,
    fam: Family,
    both: bool,
) -> Result<(Report, bool), DoctorError> {
    let host = snap.host();
    let fixer = Fixer {
        host_name: q.host_name.clone(),
        host_path: q.host_path.clone().unwrap_or_default(),
    };
    let src_ns = match &q.from {
        From::Outside { client: Some(id) } | From::Container { ns: id } => {
            Some(snap.ns(*id).ok_or_else(|| {
                DoctorError::Usage("the source namespace is not in the snapshot".into())
            })?)
        }
        _ => None,
    };
    let container_ns = match q.container {
        Some(id) => Some(snap.ns(id).ok_or_else(|| {
            DoctorError::Usage("the container's namespace is not in the snapshot".into())
        })?),
        None => None,
    };
    let from = describe_from(snap, &q.from);
    let mut packet = receiver::build_packet(q, snap, src_ns, fam == Family::Ipv6)?;

    let mut hops = Vec::new();
    // 0. What the engine intends for this port (or container), and whether that holds.
    let intended = engine::intended(
        snap,
        fw,
        q,
        packet.proto,
        packet.dport,
        packet.dst.is_ipv6(),
    );
    if q.container_name.is_some() && container_ns.is_none() && intended.is_none() {
        return Err(DoctorError::Usage(format!(
            "no container {} in the snapshot",
            q.container_name.as_deref().unwrap_or("?")
        )));
    }
    // The other family's binding of the same container, when both families are followed.
    let other = both
        .then(|| {
            engine::intended(
                snap,
                fw,
                q,
                packet.proto,
                packet.dport,
                !packet.dst.is_ipv6(),
            )
        })
        .flatten()
        .filter(|(o, _)| intended.is_some_and(|(c, _)| c.id == o.id))
        .map(|(_, b)| b);
    if let Some((c, b)) = intended {
        if packet.dport == 0 {
            if let Some(b) = b {
                packet.dport = b.host_port;
            }
        }
        let hop = engine::intent_hop(snap, c, b, other, &packet, &fixer);
        // Published on another address: a fault only when nothing else receives the packet
        // here (a relay the user started answers it); decided after the receiver below.
        let elsewhere = hop.fault == Some(Fault::PublishedElsewhere);
        let failed = hop.verdict == Verdict::Fail && !elsewhere;
        hops.push(hop);
        if failed || container_ns.is_none() && q.container_name.is_some() {
            // The cause is named; what follows from it (nothing receives, no namespace) is not
            // a second fault.
            let mut report = unconcluded(snap, fam, from, packet, None, hops);
            report.diagnosis = conclude(&report);
            return Ok((report, true));
        }
    }
    // 1. Who receives the connection.
    let (dest, mut receiver_hop, walk) =
        receiver::receiver(q, snap, fw, &mut packet, container_ns, &from, &fixer);
    // Nothing receives a port the engine publishes for a running container: the engine's
    // DNAT rule is what is missing (deleted, or flushed by a firewall reload).
    if receiver_hop.fault == Some(Fault::NoReceiver)
        && !fw.has_dnat_for_port_in(packet.dst.is_ipv6(), packet.proto, packet.dport)
    {
        if let Some((c, Some(b))) = intended {
            if let Some(h) = engine::dnat_missing(snap, c, b, &packet, &fixer) {
                let evidence = std::mem::take(&mut receiver_hop.evidence);
                receiver_hop = h;
                receiver_hop.evidence.extend(evidence);
            }
        }
    }
    if let Some(e) = hops
        .iter_mut()
        .find(|h| h.fault == Some(Fault::PublishedElsewhere))
    {
        if receiver_hop.verdict == Verdict::Fail {
            // Nothing receives it because of where it is published: one cause, one FAIL.
            e.evidence
                .push(format!("receiver: {}", receiver_hop.summary));
        } else {
            e.verdict = Verdict::Ok;
            e.fault = None;
            e.fix = None;
            let head = e
                .summary
                .split(": a client")
                .next()
                .unwrap_or_default()
                .to_string();
            e.summary = format!("{head}; another receiver answers at this address");
            hops.push(receiver_hop);
        }
    } else {
        hops.push(receiver_hop);
    }
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
    let mut report = unconcluded(snap, fam, from, packet.clone(), dest.clone(), hops);
    if let Some(mut dest) = dest {
        let forwarded = dest.via == "dnat" && packet.hook == "prerouting";
        path::path_checks(
            &path::PathCtx {
                q,
                snap,
                host,
                fw,
                walk: walk.as_ref(),
                packet: &packet,
                fixer: &fixer,
                forwarded,
            },
            &mut dest,
            &mut report.hops,
        );
        report.destination = Some(dest);
    }
    report.diagnosis = conclude(&report);
    Ok((report, false))
}

/// How the source reads in the report.
fn describe_from(snap: &Snapshot, f: &From) -> String {
    let label = |id| {
        snap.ns(id)
            .map(|n| n.label.clone())
            .unwrap_or_else(|| "?".into())
    };
    match f {
        From::Localhost => "localhost".into(),
        From::Host => "host".into(),
        From::Outside { client: None } => "outside".into(),
        From::Outside { client: Some(id) } => format!("outside:{}", label(*id)),
        From::Container { ns } => {
            let l = label(*ns);
            if l.starts_with("container:") {
                l
            } else {
                format!("container:{l}")
            }
        }
    }
}

fn is_current(ns: &NetNs) -> bool {
    NetNs::current().map(|c| c.id() == ns.id()).unwrap_or(false)
}

/// The one line: the first failing hop in path order, else the probe, else all clear.
fn conclude(r: &Report) -> Diagnosis {
    if let Some(h) = r.hops.iter().find(|h| h.verdict == Verdict::Fail) {
        // A proxy to a name unknown here dials the last addresses it had: a probe through it
        // may well get through, and the line must not read as if nothing answered. An answer
        // is what got through: socat accepts and closes when its lookup fails (0 bytes back).
        use crate::facts::proxies::ProxyKind;
        let through = match (h.fault, h.proxy) {
            (Some(Fault::ProxyTargetUnresolved), kind)
                if r.probe.as_ref().is_some_and(|p| p.ok && p.received > 0) =>
            {
                match kind {
                    Some(ProxyKind::Socat) => {
                        "; the probe got through the proxy (socat looks the name up per connection: it resolved for socat then)"
                    }
                    Some(ProxyKind::DockerProxy) => "; the probe got through the proxy",
                    _ => "; the probe got through the proxy (it dials the last addresses it had for the name)",
                }
            }
            _ => "",
        };
        return Diagnosis {
            ok: false,
            fault: h.fault,
            hop: Some(h.id.clone()),
            line: match h.family {
                Some(Family::Ipv6) => format!("over IPv6: {}{through}", h.summary),
                _ => format!("{}{through}", h.summary),
            },
            fix: h.fix.clone(),
        };
    }
    let v6 = r.ipv6.as_ref();
    let probes: Vec<(&str, &facts::ProbeResult)> = r
        .probe
        .iter()
        .map(|p| ("", p))
        .chain(v6.and_then(|f| f.probe.as_ref()).map(|p| (" over IPv6", p)))
        .collect();
    if let Some((over, p)) = probes.iter().find(|(_, p)| !p.ok) {
        return Diagnosis {
            ok: false,
            fault: Some(Fault::ProbeFailed),
            hop: None,
            line: format!(
                "every hop looks right but the probe{over} failed: {}{}",
                p.outcome,
                p.trace
                    .as_ref()
                    .and_then(|t| t.drop.as_ref())
                    .map(|d| format!("; traced: {}", probe::drop_words(d)))
                    .unwrap_or_default()
            ),
            fix: None,
        };
    }
    let warns = r.hops.iter().filter(|h| h.verdict == Verdict::Warn).count();
    let to = |d: &Destination| SocketAddr::new(d.addr, d.port).to_string();
    let dest = r
        .destination
        .as_ref()
        .map(|d| {
            let also = v6
                .and_then(|f| f.destination.as_ref())
                .map(|d6| format!(" and {}", to(d6)))
                .unwrap_or_default();
            format!(
                " to {}{also}{}",
                to(d),
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
            "all clear{}: the path from {}{dest} is open{}{}",
            if v6.is_some() {
                " over IPv4 and IPv6"
            } else {
                ""
            },
            r.from,
            match probes.len() {
                0 => "",
                1 => " and the probe got through",
                _ => " and both probes got through",
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

#[cfg(test)]
mod tests;
