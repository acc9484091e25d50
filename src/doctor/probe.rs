//! `--probe`: make the connection for real from the chosen source and say what happened.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::facts::firewall::capture;
pub(crate) use crate::facts::ProbeResult;
use crate::facts::{ProbeDrop, ProbeTrace, Snapshot};
use crate::netns::links::Rtnl;
use crate::netns::sockets::Proto;
use crate::netns::NetNs;
use crate::trace::{Ending, TraceFilter, TraceOptions, TracePoint, TraceReport, L4};

use super::{Destination, Packet, Request, Source};

/// How long to wait for the handshake and for each read.
const WAIT: Duration = Duration::from_secs(3);

/// An HTTP/1.0 request padded past any MTU, so a path that loses large segments shows.
fn payload() -> Vec<u8> {
    let pad = "a".repeat(16 * 1024);
    format!("GET / HTTP/1.0\r\nHost: nettool-doctor\r\nUser-Agent: nettool-doctor-probe\r\nX-Probe-Padding: {pad}\r\n\r\n")
        .into_bytes()
}

/// Connect from the request's source to the packet's destination and report, with a trace
/// of the probe's packets in the source, the host and the destination's namespace (`dest`).
pub(crate) fn run(
    req: &Request,
    packet: &Packet,
    snap: &Snapshot,
    dest: Option<&Destination>,
) -> ProbeResult {
    let target = SocketAddr::new(packet.dst, packet.dport);
    let ns: Option<NetNs> = match &req.from {
        Source::Localhost | Source::Host => Some(req.host.clone()),
        Source::Outside(n) => n.clone().or_else(|| {
            // The temporary client diagnose attached: the snapshot's outside namespace.
            snap.namespaces
                .iter()
                .find(|n| n.label.contains("(temporary"))
                .and_then(|n| NetNs::from_path(&n.path).ok())
        }),
        Source::Container(n) => Some(n.clone()),
    };
    let label = ns.as_ref().map(|n| {
        snap.ns(n.id())
            .map(|f| f.label.clone())
            .unwrap_or_else(|| n.label().to_string())
    });
    // From outside with no client namespace given: attach a throwaway one to the host.
    let mut temp = None;
    let (ns, label) = match ns {
        Some(ns) => (ns, label),
        None => match TempClient::attach(&req.host) {
            Ok(t) => {
                let l = t.describe();
                let ns = t.ns.clone();
                temp = Some(t);
                (ns, Some(l))
            }
            Err(e) => {
                return result(
                    target,
                    false,
                    false,
                    0,
                    0,
                    format!(
                        "could not attach a temporary outside namespace ({e}); give one with --from outside:NETNS"
                    ),
                )
            }
        },
    };
    let proto = packet.proto;
    let source_ip = packet.src;
    let bind = matches!(req.from, Source::Host) && !source_ip.is_unspecified();
    let opts = trace_options(req, packet, snap, dest, &ns, label.as_deref());
    let probe = || {
        let started = Instant::now();
        let r = ns.run(move || match proto {
            Proto::Tcp => tcp(target),
            Proto::Udp => udp(target, bind.then_some(source_ip)),
        });
        (r, started.elapsed())
    };
    let ((res, elapsed), traced) = crate::trace::around(opts, probe);
    let mut r = match res {
        Ok(r) => r,
        Err(e) => result(
            target,
            false,
            false,
            0,
            0,
            format!("could not enter the source namespace: {e}"),
        ),
    };
    r.from_netns = label;
    r.elapsed_ms = elapsed.as_millis() as u64;
    r.trace = Some(match traced {
        Ok(report) => evidence(&report),
        Err(e) => ProbeTrace {
            notes: vec![format!("the probe was not traced: {e}")],
            ..Default::default()
        },
    });
    drop(temp);
    r
}

/// Trace the probe's protocol and ports (the published one, the destination's) in the
/// source namespace, the host and the destination's namespace.
fn trace_options(
    req: &Request,
    packet: &Packet,
    snap: &Snapshot,
    dest: Option<&Destination>,
    source: &NetNs,
    source_label: Option<&str>,
) -> TraceOptions {
    let name = |ns: &NetNs, fallback: &str| {
        snap.ns(ns.id())
            .map(|f| f.label.clone())
            .unwrap_or_else(|| fallback.to_string())
    };
    let container = |ns: &NetNs| {
        let names: Vec<String> = snap
            .ns(ns.id())
            .map(|f| {
                f.containers
                    .iter()
                    .filter(|c| !c.infra)
                    .filter_map(|c| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        (!names.is_empty()).then(|| names.join(", "))
    };
    let mut namespaces = vec![
        (source.clone(), source_label.map(str::to_string)),
        (req.host.clone(), req.host_name.clone()),
    ];
    let dest_ns = dest
        .and_then(|d| d.netns.as_deref())
        .and_then(|l| snap.namespaces.iter().find(|n| n.label == l))
        .and_then(|n| NetNs::from_path(&n.path).ok());
    namespaces.extend(dest_ns.map(|n| (n, None)));
    namespaces.extend(req.container.clone().map(|n| (n, None)));
    let mut points: Vec<TracePoint> = Vec::new();
    for (ns, label) in namespaces {
        if points.iter().any(|p| p.ns == ns) {
            continue;
        }
        // The rules the snapshot holds (the host's) are not dumped again for the trace.
        let firewall = snap.ns(ns.id()).and_then(|f| f.firewall(snap)).cloned();
        points.push(TracePoint {
            name: label.unwrap_or_else(|| name(&ns, ns.label())),
            container: container(&ns),
            ns,
            firewall,
        });
    }
    let mut filter = TraceFilter {
        proto: Some(match packet.proto {
            Proto::Tcp => L4::Tcp,
            Proto::Udp => L4::Udp,
        }),
        ..Default::default()
    };
    filter.ports.insert(packet.dport);
    filter.ports.extend(dest.map(|d| d.port));
    TraceOptions {
        filter,
        points,
        ..Default::default()
    }
}

/// A traced drop in one sentence: where, and the rule or the kernel's reason.
pub(crate) fn drop_words(d: &ProbeDrop) -> String {
    let place = match &d.container {
        Some(c) => format!("{} (container {c})", d.netns),
        None => d.netns.clone(),
    };
    match (&d.chain, &d.reason) {
        (Some(chain), _) => format!(
            "{} dropped in {place} by a rule in {chain}{} [{}]",
            d.packet,
            d.rule
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            d.engine.as_deref().unwrap_or("?")
        ),
        (None, Some(reason)) => format!(
            "{} dropped in {place} by the kernel: {reason}{} at {}",
            d.packet,
            d.meaning
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            d.location.as_deref().unwrap_or("?")
        ),
        (None, None) => format!("{} dropped in {place}", d.packet),
    }
}

/// The first drop among the probe's traced packets, in words the report can show.
fn evidence(report: &TraceReport) -> ProbeTrace {
    let mut packets: Vec<_> = report.packets.iter().collect();
    packets.sort_by(|a, b| a.time.total_cmp(&b.time));
    let drop = packets.iter().find_map(|p| {
        let at = |d: ProbeDrop| ProbeDrop {
            netns: p.netns.clone(),
            container: p.container.clone(),
            packet: format!(
                "{} {} -> {}{}",
                p.proto,
                p.src,
                p.dst,
                p.flags
                    .as_deref()
                    .map(|f| format!(" {f}"))
                    .unwrap_or_default()
            ),
            ..d
        };
        match &p.ending {
            Ending::DroppedByRule {
                chain,
                handle,
                rule,
                iptables,
                engine,
            } => Some(at(ProbeDrop {
                chain: Some(chain.clone()),
                rule: iptables
                    .clone()
                    .or_else(|| rule.clone())
                    .or_else(|| handle.is_none().then(|| "the chain's policy".to_string())),
                engine: Some(engine.as_str().to_string()),
                reason: p.kernel_drop.as_ref().map(|k| k.reason.clone()),
                location: p.kernel_drop.as_ref().map(|k| k.location.clone()),
                ..Default::default()
            })),
            Ending::DroppedByKernel {
                reason,
                meaning,
                location,
            } => Some(at(ProbeDrop {
                reason: Some(reason.clone()),
                location: Some(location.clone()),
                meaning: (!meaning.is_empty()).then(|| meaning.clone()),
                ..Default::default()
            })),
            _ => None,
        }
    });
    let mut notes = report.notes.clone();
    if report.nft_events_lost > 0 {
        notes.push(format!(
            "{} trace event(s) lost: the trace may miss a step",
            report.nft_events_lost
        ));
    }
    ProbeTrace {
        packets: report.packets.len(),
        drop,
        notes,
    }
}

/// A throwaway "outside" namespace joined to the host by a veth on a free /30 of
/// 198.18.0.0/15 (the benchmarking range); removed again on drop.
pub(crate) struct TempClient {
    name: String,
    /// The client namespace.
    pub(crate) ns: NetNs,
    host: NetNs,
    host_if: String,
    client_addr: Ipv4Addr,
}

impl TempClient {
    /// How the client reads in the report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} (temporary, via {} {})",
            self.name, self.host_if, self.client_addr
        )
    }

    /// Create the namespace and its veth into `host`.
    pub(crate) fn attach(host: &NetNs) -> Result<TempClient, String> {
        let pid = std::process::id();
        let name = format!("nt-probe-{pid}");
        let root = NetNs::current().map_err(|e| e.to_string())?;
        reap_stale(&root);
        let host_if = format!("ntprobe{}", pid % 100_000);
        // A /30 no route of the host already covers.
        let routes = host
            .run(|| Rtnl::open().and_then(|mut r| r.routes(false)))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let taken = |net: &Ipv4Net| {
            routes.iter().any(|r| match r.destination {
                Some(IpAddr::V4(d)) if r.prefix_len > 0 => Ipv4Net::new(d, r.prefix_len)
                    .map(|rn| rn.contains(&net.network()) || net.contains(&rn.network()))
                    .unwrap_or(false),
                _ => false,
            })
        };
        let net = (0..512u32)
            .map(|i| {
                let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i * 4;
                Ipv4Net::new(Ipv4Addr::from(base), 30).expect("valid /30")
            })
            .find(|n| !taken(n))
            .ok_or("no free /30 in 198.18.0.0/15")?;
        let gw = Ipv4Addr::from(u32::from(net.network()) + 1);
        let client = Ipv4Addr::from(u32::from(net.network()) + 2);
        ip(&root, &["netns", "add", &name])?;
        let ns = NetNs::from_name(&name).map_err(|e| e.to_string())?;
        let t = TempClient {
            name: name.clone(),
            ns,
            host: host.clone(),
            host_if: host_if.clone(),
            client_addr: client,
        };
        ip(
            host,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
        )?;
        ip(host, &["addr", "add", &format!("{gw}/30"), "dev", &host_if])?;
        ip(host, &["link", "set", &host_if, "up"])?;
        ip(&t.ns, &["link", "set", "lo", "up"])?;
        ip(
            &t.ns,
            &["addr", "add", &format!("{client}/30"), "dev", "eth0"],
        )?;
        ip(&t.ns, &["link", "set", "eth0", "up"])?;
        ip(&t.ns, &["route", "add", "default", "via", &gw.to_string()])?;
        // IPv6 too, on the matching /64 of 2001:2::/48 (the IPv6 benchmarking range), so a
        // dual-stack port is probed over both families. nodad: usable at once. A host with
        // IPv6 off keeps an IPv4-only client.
        let i = (u32::from(net.network()) - u32::from(Ipv4Addr::new(198, 18, 0, 0))) / 4;
        let gw6 = format!("2001:2:0:{i:x}::1");
        let _ = ip(
            host,
            &[
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                &host_if,
                "nodad",
            ],
        )
        .and_then(|_| {
            ip(
                &t.ns,
                &[
                    "addr",
                    "add",
                    &format!("2001:2:0:{i:x}::2/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )
        })
        .and_then(|_| ip(&t.ns, &["-6", "route", "add", "default", "via", &gw6]));
        Ok(t)
    }
}

impl Drop for TempClient {
    fn drop(&mut self) {
        let _ = ip(&self.host, &["link", "del", &self.host_if]);
        if let Ok(root) = NetNs::current() {
            let _ = ip(&root, &["netns", "del", &self.name]);
        }
    }
}

/// Remove probe namespaces left by a doctor that was killed mid-probe (its pid is gone);
/// deleting the namespace deletes its veth and so the host end too.
fn reap_stale(root: &NetNs) {
    let Ok(rd) = std::fs::read_dir(crate::netns::NETNS_RUN_DIR) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("nt-probe-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(root, &["netns", "del", &name]);
        }
    }
}

/// Run `ip ARGS` inside `ns` (argv, no shell).
fn ip(ns: &NetNs, args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    capture(ns, &argv)
        .map(|_| ())
        .map_err(|e| format!("{e} (in {})", ns.label()))
}

fn result(
    target: SocketAddr,
    ok: bool,
    connected: bool,
    sent: usize,
    received: usize,
    outcome: String,
) -> ProbeResult {
    ProbeResult {
        from_netns: None,
        target: target.to_string(),
        ok,
        connected,
        sent,
        received,
        outcome,
        elapsed_ms: 0,
        trace: None,
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => {
            "connection refused: a RST came back (nothing listens there, or a REJECT rule)".into()
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!(
            "no answer to the SYN within {}s: dropped on the way",
            WAIT.as_secs()
        ),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => "host unreachable (ICMP or no neighbour)".into(),
            Some(libc::ENETUNREACH) => "network unreachable: no route".into(),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("refused locally ({e}): an OUTPUT rule rejects it")
            }
            _ => format!("connect failed: {e}"),
        },
    }
}

fn tcp(target: SocketAddr) -> ProbeResult {
    let mut s = match TcpStream::connect_timeout(&target, WAIT) {
        Ok(s) => s,
        Err(e) => return result(target, false, false, 0, 0, connect_error(&e)),
    };
    let _ = s.set_read_timeout(Some(WAIT));
    let _ = s.set_write_timeout(Some(WAIT));
    let data = payload();
    let mut sent = 0;
    if let Err(e) = s.write_all(&data) {
        return result(
            target,
            false,
            true,
            sent,
            0,
            format!("connected, then sending failed: {e}"),
        );
    }
    sent = data.len();
    let _ = s.shutdown(Shutdown::Write);
    let mut received = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return result(
                    target,
                    true,
                    true,
                    sent,
                    received,
                    format!(
                        "connected, sent {sent} bytes, got {received} bytes back and a clean close"
                    ),
                )
            }
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return if received > 0 {
                    result(
                        target,
                        true,
                        true,
                        sent,
                        received,
                        format!("connected, got {received} bytes back; the peer kept the connection open"),
                    )
                } else {
                    result(
                        target,
                        false,
                        true,
                        sent,
                        0,
                        format!(
                            "connected but no answer to a {sent}-byte request within {}s (large segments lost? MTU)",
                            WAIT.as_secs()
                        ),
                    )
                };
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset && received > 0 => {
                return result(
                    target,
                    true,
                    true,
                    sent,
                    received,
                    format!("connected, got {received} bytes back, then a reset"),
                )
            }
            Err(e) => {
                return result(
                    target,
                    false,
                    true,
                    sent,
                    received,
                    format!("connected, then {e} after {received} bytes"),
                )
            }
        }
    }
}

fn udp(target: SocketAddr, bind: Option<IpAddr>) -> ProbeResult {
    let any = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = match UdpSocket::bind(SocketAddr::new(bind.unwrap_or(any), 0))
        .or_else(|_| UdpSocket::bind(SocketAddr::new(any, 0)))
    {
        Ok(s) => s,
        Err(e) => {
            return result(
                target,
                false,
                false,
                0,
                0,
                format!("cannot open a UDP socket: {e}"),
            )
        }
    };
    if let Err(e) = sock.connect(target) {
        return result(target, false, false, 0, 0, connect_error(&e));
    }
    let _ = sock.set_read_timeout(Some(WAIT));
    let msg = b"nettool-doctor-probe\n";
    if let Err(e) = sock.send(msg) {
        return result(target, false, false, 0, 0, format!("send failed: {e}"));
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => result(
            target,
            true,
            true,
            msg.len(),
            n,
            format!("sent {} bytes, got a {n}-byte datagram back", msg.len()),
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => result(
            target,
            false,
            false,
            msg.len(),
            0,
            "ICMP port unreachable came back: nothing listens there".into(),
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => result(
            target,
            false,
            false,
            msg.len(),
            0,
            format!(
                "no datagram back within {}s (dropped, or the service does not answer)",
                WAIT.as_secs()
            ),
        ),
        Err(e) => result(
            target,
            false,
            false,
            msg.len(),
            0,
            format!("recv failed: {e}"),
        ),
    }
}
