//! `--probe`: make the connection for real from the chosen source and say what happened.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::facts::firewall::capture;
pub use crate::facts::ProbeResult;
use crate::facts::Snapshot;
use crate::netns::links::Rtnl;
use crate::netns::sockets::Proto;
use crate::netns::NetNs;

use super::{Packet, Request, Source};

/// How long to wait for the handshake and for each read.
const WAIT: Duration = Duration::from_secs(3);

/// An HTTP/1.0 request padded past any MTU, so a path that loses large segments shows.
fn payload() -> Vec<u8> {
    let pad = "a".repeat(16 * 1024);
    format!("GET / HTTP/1.0\r\nHost: nettool-doctor\r\nUser-Agent: nettool-doctor-probe\r\nX-Probe-Padding: {pad}\r\n\r\n")
        .into_bytes()
}

/// Connect from the request's source to the packet's destination and report.
pub fn run(req: &Request, packet: &Packet, snap: &Snapshot) -> ProbeResult {
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
    let started = Instant::now();
    let res = ns.run(move || match proto {
        Proto::Tcp => tcp(target),
        Proto::Udp => udp(target, bind.then_some(source_ip)),
    });
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
    r.elapsed_ms = started.elapsed().as_millis() as u64;
    drop(temp);
    r
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
