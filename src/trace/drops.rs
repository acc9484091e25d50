//! Kernel drop reasons from the skb:kfree_skb tracepoint, read through a tracefs instance of
//! our own (the global trace buffer is never touched), filtered in the kernel.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::TraceFilter;

/// Where tracefs is mounted (mounted there if it is empty).
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";

/// One skb:kfree_skb event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct KernelDrop {
    /// CLOCK_MONOTONIC seconds (the instance's trace_clock is mono).
    pub time: f64,
    /// The drop reason, as the kernel names it (IP_RPFILTER, NO_SOCKET, ...).
    pub reason: String,
    /// Where in the kernel: function+offset.
    pub location: String,
    /// Ethertype of the packet (0x0800 IPv4, 0x86dd IPv6).
    pub protocol: u16,
    /// The skb address as printed (hashed by the kernel; equal only for one skb).
    pub skbaddr: String,
    /// The CPU that dropped it.
    pub cpu: u32,
    /// The task that was running (often a softirq on behalf of nobody).
    pub task: String,
    /// What the kernel answered this very skb with just before it freed it (a TCP reset, an
    /// ICMP error), and the addresses that answer names: the skb address ties the two events.
    pub answer: Option<KernelAnswer>,
}

/// An address and, for TCP/UDP/SCTP, a port.
pub(crate) type Endpoint = (std::net::IpAddr, Option<u16>);

/// A TCP reset or ICMP error the kernel sent about a packet it then dropped
/// (tcp:tcp_send_reset, icmp:icmp_send), with the packet's two ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct KernelAnswer {
    /// "TCP reset" or "ICMP type T code C".
    pub what: String,
    /// One end of the dropped packet (address, and port when the event has it).
    pub a: Endpoint,
    /// The other end.
    pub b: Endpoint,
}

impl KernelAnswer {
    /// The answer names the packet with these ends (either way round; a missing port
    /// matches any).
    pub(crate) fn names(&self, src: Endpoint, dst: Endpoint) -> bool {
        let same =
            |x: Endpoint, y: Endpoint| x.0 == y.0 && (x.1.is_none() || y.1.is_none() || x.1 == y.1);
        (same(self.a, src) && same(self.b, dst)) || (same(self.a, dst) && same(self.b, src))
    }
}

/// Events beside kfree_skb that name the packet an skb carried, and their filters (the
/// events fire only when the kernel answers a packet with an error, never per packet).
const ANSWER_EVENTS: &[(&str, &str)] = &[
    ("tcp/tcp_send_reset", ""),
    // Destination unreachable (port, fragmentation needed, host) and time exceeded.
    ("icmp/icmp_send", "type == 3 || type == 11"),
];

/// What a drop reason means for a container network, in words.
pub(crate) fn explain_reason(reason: &str) -> &'static str {
    match reason {
        "NETFILTER_DROP" => "a netfilter rule dropped it",
        "IP_RPFILTER" => "reverse path filter (rp_filter): the source is not routed back through the interface it came in on",
        "NO_SOCKET" => "no socket listens on that port (TCP answers with a reset, UDP with port unreachable)",
        "PKT_TOO_BIG" => "bigger than the next hop's MTU with DF set (an ICMP 'fragmentation needed' went back)",
        "NEIGH_FAILED" => "the next hop's address did not answer ARP/ND",
        "NEIGH_QUEUEFULL" => "too many packets waited for ARP/ND of the next hop",
        "IP_INNOROUTES" => "no route for the packet (or forwarding is off on the way in)",
        "IP_OUTNOROUTES" => "no route for a locally sent packet",
        "IP_INADDRERRORS" => "it cannot be routed from the interface it came in on: forwarding is off there (net.ipv4.conf.IFACE.forwarding = 0), or the route is unreachable/prohibit",
        "IP_INVALID_SOURCE" => "the source address is invalid for this interface (martian)",
        "IP_LOCAL_SOURCE" => "the source address is one of this host's own",
        "IP_LOCALNET" => "127.0.0.0/8 arriving from outside (route_localnet is off)",
        "OTHERHOST" => "the frame was for another host's MAC",
        "SOCKET_RCVBUFF" => "the socket's receive buffer is full",
        "SOCKET_BACKLOG" => "the socket's backlog is full",
        "TCP_LISTEN_OVERFLOW" => "the listener's accept queue is full",
        "CPU_BACKLOG" => "the CPU's input backlog is full",
        "QDISC_DROP" => "the queueing discipline dropped it",
        "IPV6DISABLED" => "IPv6 is disabled on the interface",
        "TCP_CSUM" | "UDP_CSUM" | "IP_CSUM" => "bad checksum",
        _ => "",
    }
}

/// tracefs is mounted at [`TRACEFS`].
pub(crate) fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("instances").is_dir()
}

/// Mount tracefs at [`TRACEFS`] when it is not there yet; the caller journals it first.
pub(crate) fn ensure_tracefs() -> Result<(), String> {
    if tracefs_mounted() {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        format!("cannot mount tracefs at {TRACEFS}: {e} (needs root; or mount it yourself: mount -t tracefs nodev {TRACEFS})")
    })
}

/// Unmount the tracefs a tracer mounted at `path`: Ok(true) when it was mounted and is gone,
/// Ok(false) when nothing was mounted there, Err when it is busy (another tracer reads it).
pub(crate) fn unmount_tracefs(path: &Path) -> Result<bool, String> {
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
            f.get(4).is_some_and(|m| Path::new(m) == path) && fstype == Some("tracefs")
        });
    if !mounted {
        return Ok(false);
    }
    nix::mount::umount2(path, nix::mount::MntFlags::empty())
        .map(|_| true)
        .map_err(|e| format!("cannot unmount tracefs at {}: {e}", path.display()))
}

/// The numeric value of a reason name in this kernel's tracepoint format (NOT_SPECIFIED is 2
/// on current kernels; it moved before).
fn reason_number(format: &str, name: &str) -> Option<u32> {
    let needle = format!("\"{name}\" }}");
    let at = format.find(&needle)?;
    let open = format[..at].rfind('{')?;
    format[open + 1..at]
        .trim()
        .trim_end_matches(',')
        .trim()
        .parse()
        .ok()
}

/// Reasons no packet of a traced IP flow is dropped for: a closing socket freeing its queue,
/// other families' and tunnels' own checks, neighbour discovery's own messages. NOT_SPECIFIED
/// says nothing at all.
const NEVER_OURS: &[&str] = &[
    "NOT_SPECIFIED",
    "QUEUE_PURGE",
    "SOCKET_CLOSE",
    "UNIX_DISCONNECT",
    "UNIX_SKIP_OOB",
    "CAN_RX_INVALID_FRAME",
    "CANFD_RX_INVALID_FRAME",
    "CANXL_RX_INVALID_FRAME",
    "VXLAN_INVALID_HDR",
    "VXLAN_VNI_NOT_FOUND",
    "VXLAN_ENTRY_EXISTS",
    "ARP_PVLAN_DISABLE",
    "MAC_IEEE_MAC_CONTROL",
    "BRIDGE_INGRESS_STP_STATE",
    "IPV6_NDISC_FRAG",
    "IPV6_NDISC_HOP_LIMIT",
    "IPV6_NDISC_BAD_CODE",
    "IPV6_NDISC_BAD_OPTIONS",
    "IPV6_NDISC_NS_OTHERHOST",
];

/// Every reason name of this kernel's tracepoint format (`{ N, "NAME" }` pairs).
fn reason_names(format: &str) -> Vec<&str> {
    format
        .split("{ ")
        .skip(1)
        .filter_map(|p| p.split_once(", \"").and_then(|(_, r)| r.split_once('"')))
        .map(|(name, _)| name)
        .collect()
}

/// The kernel-side filter of skb:kfree_skb for a trace of `f`: only the address families the
/// filter can match, and only reasons a packet of its protocol can be dropped for (a UDP trace
/// leaves out TCP's reasons, a TCP one UDP's checksum, any trace the reasons of other
/// families, tunnels and sockets closing: [`NEVER_OURS`]). The numbers come from this kernel's
/// format: reasons move between kernel versions.
pub(crate) fn kernel_filter(format: &str, f: &TraceFilter) -> String {
    use super::L4;
    let names = reason_names(format);
    let not_ours = |name: &str| {
        NEVER_OURS.contains(&name)
            || match f.proto {
                Some(L4::Udp) | Some(L4::Icmp) => name.starts_with("TCP_"),
                Some(L4::Tcp) => name == "UDP_CSUM",
                None => false,
            }
            || (f.proto != Some(L4::Icmp) && name == "ICMP_CSUM")
    };
    let mut parts: Vec<String> = names
        .iter()
        .filter(|n| not_ours(n))
        .filter_map(|r| reason_number(format, r))
        .map(|n| format!("reason != {n}"))
        .collect();
    let (v4, v6) = (
        f.addrs.iter().any(|a| a.is_ipv4()),
        f.addrs.iter().any(|a| a.is_ipv6()),
    );
    parts.push(match (v4, v6) {
        (true, false) => "protocol == 2048".to_string(),
        (false, true) => "protocol == 34525".to_string(),
        _ => "(protocol == 2048 || protocol == 34525)".to_string(),
    });
    parts.join(" && ")
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write '{text}' to {}: {e}", path.display()))
}

/// Create and enable instance `name`; the caller journals its path first.
pub(crate) fn instance_path(name: &str) -> PathBuf {
    Path::new(TRACEFS).join("instances").join(name)
}

/// A tracefs instance of our own with skb:kfree_skb enabled and filtered.
pub(crate) struct DropTracer {
    path: PathBuf,
    pipe: fs::File,
    pending: Vec<u8>,
    /// Answers waiting for the kfree_skb of their skb, by skb address, with their time.
    answers: HashMap<String, (f64, KernelAnswer)>,
}

impl DropTracer {
    /// Create the instance at `path` (journaled by the caller), filter kfree_skb for a trace
    /// of `traced` and enable it.
    pub(crate) fn start(path: &Path, traced: &TraceFilter) -> Result<Self, String> {
        ensure_tracefs()?;
        let ev = Path::new(TRACEFS).join("events/skb/kfree_skb/format");
        let format = fs::read_to_string(&ev).map_err(|e| {
            format!(
                "cannot read {}: {e} (this kernel has no skb:kfree_skb tracepoint; run with --no-drops)",
                ev.display()
            )
        })?;
        fs::create_dir(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let filter = kernel_filter(&format, traced);
        let setup = || -> Result<fs::File, String> {
            let _ = write(&path.join("trace_clock"), "mono");
            let _ = write(&path.join("buffer_size_kb"), "2048");
            write(&path.join("events/skb/kfree_skb/filter"), &filter)?;
            // Best effort: without them the drop join is by time and stage only.
            for (ev, f) in ANSWER_EVENTS {
                let dir = path.join("events").join(ev);
                if !f.is_empty() {
                    let _ = write(&dir.join("filter"), f);
                }
                let _ = write(&dir.join("enable"), "1");
            }
            write(&path.join("events/skb/kfree_skb/enable"), "1")?;
            let pipe = fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblock()
                .open(path.join("trace_pipe"))
                .map_err(|e| format!("cannot open {}/trace_pipe: {e}", path.display()))?;
            Ok(pipe)
        };
        match setup() {
            Ok(pipe) => Ok(DropTracer {
                path: path.to_path_buf(),
                pipe,
                pending: Vec::new(),
                answers: HashMap::new(),
            }),
            Err(e) => {
                let _ = remove_instance(path);
                Err(e)
            }
        }
    }

    /// The trace_pipe fd (for poll).
    pub(crate) fn raw_fd(&self) -> i32 {
        self.pipe.as_raw_fd()
    }

    /// Read what is queued without blocking and parse whole lines.
    pub(crate) fn read(&mut self) -> Vec<KernelDrop> {
        let mut buf = [0u8; 65536];
        // A bounded amount per call: the caller also has netlink sockets to serve.
        for _ in 0..16 {
            match self.pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[start..start + nl]).into_owned();
            start += nl + 1;
            if let Some((time, skb, answer)) = parse_answer(&line) {
                self.answers.insert(skb, (time, answer));
                continue;
            }
            if let Some(mut d) = parse_line(&line) {
                // The same skb, freed right after it was answered (an address is reused
                // only once the skb is freed: an older answer is someone else's).
                if let Some((t, a)) = self.answers.remove(&d.skbaddr) {
                    if d.time - t < 0.01 {
                        d.answer = Some(a);
                    }
                }
                out.push(d);
            }
        }
        self.pending.drain(..start);
        // Answers whose skb was not dropped (an ICMP error about a packet that went on).
        if self.answers.len() > 1024 {
            let newest = out.last().map_or(0.0, |d| d.time);
            self.answers.retain(|_, (t, _)| newest - *t < 1.0);
        }
        out
    }

    /// Disable the event and remove the instance.
    pub(crate) fn stop(self) -> Result<(), String> {
        let path = self.path.clone();
        drop(self.pipe);
        remove_instance(&path)
    }
}

/// Events the instance at `path` could not store (ring buffer overruns), summed over CPUs.
pub(crate) fn lost(path: &Path) -> u64 {
    let mut lost = 0;
    let Ok(dir) = fs::read_dir(path.join("per_cpu")) else {
        return 0;
    };
    for cpu in dir.flatten() {
        if let Ok(stats) = fs::read_to_string(cpu.path().join("stats")) {
            for l in stats.lines() {
                if let Some(v) = l
                    .strip_prefix("overrun:")
                    .or_else(|| l.strip_prefix("dropped events:"))
                {
                    lost += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    lost
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Disable kfree_skb in the instance at `path` and remove it.
pub(crate) fn remove_instance(path: &Path) -> Result<(), String> {
    let _ = fs::write(path.join("events/skb/kfree_skb/enable"), "0");
    for (ev, _) in ANSWER_EVENTS {
        let _ = fs::write(path.join("events").join(ev).join("enable"), "0");
    }
    let _ = fs::write(path.join("events/skb/kfree_skb/filter"), "0");
    // Removal can race a reader that is just closing: try a few times.
    let mut last = String::new();
    for _ in 0..20 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!(
        "cannot remove tracefs instance {}: {last} (rmdir it by hand)",
        path.display()
    ))
}

/// Parse one trace_pipe line:
/// `  <idle>-0  [001] ..s2. 1234.567890: kfree_skb: skbaddr=... rx_sk=... protocol=2048 location=ip_rcv_finish_core+0x1a/0x3c0 reason: IP_RPFILTER`
pub(crate) fn parse_line(line: &str) -> Option<KernelDrop> {
    let (head, body) = line.split_once(": kfree_skb: ")?;
    let head = head.trim();
    let lb = head.find('[')?;
    let rb = head[lb..].find(']')? + lb;
    let task = head[..lb].trim().to_string();
    let cpu = head[lb + 1..rb].trim().parse().ok()?;
    let time = head.rsplit(' ').next()?.parse::<f64>().ok()?;
    let field = |k: &str| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let reason = body
        .split("reason: ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    Some(KernelDrop {
        time,
        reason,
        location: field("location=").unwrap_or_default(),
        protocol: field("protocol=").and_then(|p| p.parse().ok()).unwrap_or(0),
        skbaddr: field("skbaddr=").unwrap_or_default(),
        cpu,
        task,
        answer: None,
    })
}

/// `ADDR:PORT`, `[V6]:PORT` or a bare address (no port, or port 0: the event did not read it).
fn endpoint(s: &str) -> Option<Endpoint> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some((sa.ip(), Some(sa.port()).filter(|p| *p != 0)));
    }
    s.parse().ok().map(|ip| (ip, None))
}

/// Parse a tcp_send_reset or icmp_send line: its time, skb address and answer.
/// `... 12.5: tcp_send_reset: skbaddr=X skaddr=Y src=10.0.0.2:81 dest=10.0.0.1:4000 state=... reason=NO_SOCKET`
/// `... 12.5: icmp_send: icmp_send: type=3, code=3. From 10.0.0.1:4000 to 10.0.0.2:81 ulen=9 skbaddr=X`
fn parse_answer(line: &str) -> Option<(f64, String, KernelAnswer)> {
    let (head, body, tcp) = if let Some((h, b)) = line.split_once(": tcp_send_reset: ") {
        (h, b, true)
    } else {
        let (h, b) = line.split_once(": icmp_send: ")?;
        (h, b, false)
    };
    let time = head.trim().rsplit(' ').next()?.parse::<f64>().ok()?;
    let field = |k: &str| body.split_whitespace().find_map(|w| w.strip_prefix(k));
    let skb = field("skbaddr=")?.to_string();
    let answer = if tcp {
        KernelAnswer {
            what: "TCP reset".into(),
            a: endpoint(field("src=")?)?,
            b: endpoint(field("dest=")?)?,
        }
    } else {
        let num = |k: &str| -> Option<i32> { field(k)?.trim_end_matches([',', '.']).parse().ok() };
        let words: Vec<&str> = body.split_whitespace().collect();
        let after = |w: &str| {
            words
                .iter()
                .position(|x| *x == w)
                .and_then(|i| words.get(i + 1))
        };
        KernelAnswer {
            what: format!("ICMP type {} code {}", num("type=")?, num("code=")?),
            a: endpoint(after("From")?)?,
            b: endpoint(after("to")?)?,
        }
    };
    Some((time, skb, answer))
}

/// CLOCK_MONOTONIC now, in seconds (what the instance's "mono" trace clock stamps).
pub(crate) fn mono_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_trace_pipe_line() {
        let l = "          <idle>-0       [001] ..s2. 12345.678901: kfree_skb: skbaddr=00000000a1b2c3d4 rx_sk=0000000000000000 protocol=2048 location=ip_rcv_finish_core+0x1a/0x3c0 reason: IP_RPFILTER\n";
        let d = parse_line(l).unwrap();
        assert_eq!(d.reason, "IP_RPFILTER");
        assert_eq!(d.protocol, 2048);
        assert_eq!(d.location, "ip_rcv_finish_core+0x1a/0x3c0");
        assert_eq!(d.cpu, 1);
        assert!((d.time - 12345.678901).abs() < 1e-6);
        assert!(parse_line("garbage").is_none());
        let (t, skb, a) = parse_answer("          <idle>-0       [001] ..s2. 12345.678800: tcp_send_reset: skbaddr=00000000a1b2c3d4 skaddr=0000000000000000 src=10.77.2.2:81 dest=10.77.2.1:55628 state=TCP_CLOSE reason=NO_SOCKET").unwrap();
        assert!((t - 12345.6788).abs() < 1e-6);
        assert_eq!(skb, "00000000a1b2c3d4");
        assert_eq!(a.what, "TCP reset");
        let ep = |s: &str| endpoint(s).unwrap();
        assert!(a.names(ep("10.77.2.1:55628"), ep("10.77.2.2:81")));
        assert!(!a.names(ep("10.77.2.1:55629"), ep("10.77.2.2:81")));
        let (_, _, a) = parse_answer("  curl-5 [000] ..... 9.5: icmp_send: icmp_send: type=3, code=4. From 10.77.1.2:0 to 10.77.2.2:0 ulen=0 skbaddr=00000000deadbeef").unwrap();
        assert_eq!(a.what, "ICMP type 3 code 4");
        // No ports in the event: the addresses decide.
        assert!(a.names(ep("10.77.2.2:80"), ep("10.77.1.2:40000")));
        let (_, _, a) = parse_answer("x-1 [000] ..... 9.5: tcp_send_reset: skbaddr=1 skaddr=2 src=[fd77:2::2]:81 dest=[fd77:2::1]:4000 state=TCP_CLOSE reason=NO_SOCKET").unwrap();
        assert!(a.names(ep("[fd77:2::1]:4000"), ep("[fd77:2::2]:81")));
        assert!(parse_line(": kfree_skb: reason: X").is_none());
    }

    #[test]
    fn the_filter_keeps_what_can_belong_to_the_traced_flow() {
        let f = r#"print fmt: "...", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 4, "SOCKET_CLOSE" }, { 10, "TCP_CSUM" }, { 11, "UDP_CSUM" }, { 105, "QUEUE_PURGE" })"#;
        assert_eq!(
            reason_names(f),
            [
                "NOT_SPECIFIED",
                "NO_SOCKET",
                "SOCKET_CLOSE",
                "TCP_CSUM",
                "UDP_CSUM",
                "QUEUE_PURGE"
            ]
        );
        let (tcp, _) = TraceFilter::parse(&["tcp:8080".to_string()]).unwrap();
        assert_eq!(
            kernel_filter(f, &tcp),
            "reason != 2 && reason != 4 && reason != 11 && reason != 105 && (protocol == 2048 || protocol == 34525)"
        );
        let words: Vec<String> = ["udp:53", "10.0.0.1"].map(String::from).to_vec();
        let (udp4, _) = TraceFilter::parse(&words).unwrap();
        assert_eq!(
            kernel_filter(f, &udp4),
            "reason != 2 && reason != 4 && reason != 10 && reason != 105 && protocol == 2048"
        );
    }
}
