//! `nettool doctor`: parse what to follow, run the checks, render the path report.

use std::net::IpAddr;

use anyhow::{anyhow, Context};
use clap::Args;

use crate::doctor::{self, Report, Request, Source, Verdict};
use crate::facts;
use crate::netns::sockets::Proto;
use crate::netns::{NetNs, NETNS_RUN_DIR};
use crate::output::{paint, print_json};

/// A usage mistake: exit code 2.
fn usage(msg: String) -> anyhow::Result<i32> {
    eprintln!("nettool doctor: {msg}");
    Ok(2)
}

/// Run `nettool doctor`.
pub(crate) fn run(a: DoctorArgs) -> anyhow::Result<i32> {
    if let Some(path) = &a.snapshot {
        let snap = facts::load(path)?;
        let report = doctor::replay(&snap)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("replaying {}", path.display()))?;
        return show(&a, &report);
    }
    let host = match &a.netns {
        Some(t) => NetNs::open(t).with_context(|| format!("--netns {t}"))?,
        None => NetNs::current().context("opening the current namespace")?,
    };
    let host_name = host_run_name(&host, a.netns.is_some());
    let mut proto = if a.udp { Proto::Udp } else { Proto::Tcp };
    let mut port = None;
    let mut container = None;
    let mut container_name = None;
    let (mut src, mut dst, mut iif) = (None, None, None);

    if let Some(t) = &a.target {
        match parse_target(t) {
            Ok(Target::Port(p, pr)) => {
                port = Some(p);
                if let Some(pr) = pr {
                    proto = pr;
                }
            }
            Ok(Target::Container(name, p)) => {
                container = resolve_container(&name, &host)?;
                container_name = Some(name);
                port = p;
            }
            Ok(Target::Pod(pod, p)) => {
                // A pod on a Kubernetes node (or a Podman pod): the namespace its containers share.
                container = Some(NetNs::open(&pod)?);
                container_name = Some(pod);
                port = p;
            }
            Err(e) => return usage(e),
        }
    }
    if let Some(spec) = &a.packet {
        match parse_packet(spec) {
            Ok(p) => {
                proto = p.proto.unwrap_or(proto);
                src = p.src;
                dst = Some(p.dst);
                port = Some(p.dport);
                iif = p.iif;
            }
            Err(e) => return usage(format!("--packet '{spec}': {e}")),
        }
    }
    if port.is_none() && container_name.is_none() {
        return usage(
            "say what to follow: a PORT (nettool doctor 8080), container:NAME, pod:NS/NAME, or --packet SPEC"
                .into(),
        );
    }
    let mut from = match parse_from(&a.from) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    // A --packet arriving on an interface is a packet from outside.
    if a.packet.is_some() && iif.is_some() && matches!(from, From::Localhost) {
        from = From::Outside(None);
    }
    let req_host = host.clone();
    let from = match from {
        From::Localhost => Source::Localhost,
        From::Host => Source::Host,
        From::Outside(None) => Source::Outside(None),
        From::Outside(Some(ns)) => Source::Outside(Some(
            NetNs::open(&ns).with_context(|| format!("--from outside:{ns}"))?,
        )),
        From::Container(name) => Source::Container(
            resolve_container(&name, &req_host)?
                .ok_or_else(|| anyhow!("--from container:{name}: the container is not running, so it has no network namespace to start from"))?,
        ),
    };
    let req = Request {
        host,
        host_name,
        proto,
        port,
        dst,
        src,
        iif,
        from,
        container,
        container_name,
        probe: a.probe,
    };
    let (report, mut snap) = doctor::diagnose(&req).map_err(|e| anyhow!(e))?;
    if let Some(path) = &a.save_snapshot {
        snap.prune();
        facts::save(&snap, path)?;
    }
    show(&a, &report)
}

/// Print the report (text or JSON); the exit code says whether the path is clear.
fn show(a: &DoctorArgs, report: &Report) -> anyhow::Result<i32> {
    if a.json {
        print_json(report)?;
    } else {
        print!("{}", render(report));
    }
    Ok(if report.diagnosis.ok { 0 } else { 1 })
}

/// The name `ip netns exec` takes for the host namespace, when doctor was pointed at one.
fn host_run_name(host: &NetNs, given: bool) -> Option<String> {
    if !given {
        return None;
    }
    let p = host.path();
    if p.parent() == Some(std::path::Path::new(NETNS_RUN_DIR)) {
        return p.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    // Opened some other way: look for a /run/netns name of the same namespace.
    std::fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .flatten()
        .find_map(|e| {
            NetNs::from_path(e.path())
                .ok()
                .filter(|n| n.id() == host.id())
                .map(|_| e.file_name().to_string_lossy().into_owned())
        })
}

/// A container by name: a container of the lab on this host, a Docker container when the
/// daemon knows it, else a /run/netns name.
/// Docker first: a stray /run/netns/web must not shadow the container the ports belong to.
fn resolve_container(name: &str, host: &NetNs) -> anyhow::Result<Option<NetNs>> {
    // A container of the nettool lab whose host this is.
    if let Some(ns) = lab_container(host, name) {
        return Ok(Some(ns));
    }
    match NetNs::from_container(name) {
        Ok(ns) => return Ok(Some(ns)),
        // Stopped, created, dead: no namespace; doctor says so in the engine's words.
        Err(crate::netns::NetnsError::ContainerDown { .. }) => return Ok(None),
        // Two engines' containers by that name: the engine's words, not a /run/netns guess.
        Err(e @ crate::netns::NetnsError::AmbiguousContainer { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    NetNs::from_name(name)
        .or_else(|_| NetNs::open(name))
        .map(Some)
        .with_context(|| {
            format!("container {name}: no such container in any engine and no namespace /run/netns/{name}")
        })
}

/// The namespace of container `name` of the nettool lab whose host is `host`.
fn lab_container(host: &NetNs, name: &str) -> Option<NetNs> {
    let current = NetNs::current().ok();
    crate::lab::state::list().into_iter().find_map(|lab| {
        let st = crate::lab::state::load(&lab).ok()?;
        let same = match &st.host_netns {
            Some(n) => NetNs::from_name(n).is_ok_and(|ns| ns.id() == host.id()),
            None => current.as_ref().is_some_and(|c| c.id() == host.id()),
        };
        if !same {
            return None;
        }
        NetNs::from_name(st.container(name)?.netns.as_deref()?).ok()
    })
}

enum Target {
    Port(u16, Option<Proto>),
    Container(String, Option<u16>),
    /// `pod:NS/NAME` as nettool prints it, kept whole (what NetNs::open takes).
    Pod(String, Option<u16>),
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("'{s}' is not a port (1-65535)"))
}

fn parse_target(t: &str) -> Result<Target, String> {
    if t.starts_with("pod:") {
        return Ok(match t.rsplit_once(':') {
            Some((pod, p)) if pod != "pod" && p.chars().all(|c| c.is_ascii_digit()) => {
                Target::Pod(pod.into(), Some(parse_port(p)?))
            }
            _ => Target::Pod(t.into(), None),
        });
    }
    if let Some(rest) = t.strip_prefix("container:") {
        return Ok(match rest.rsplit_once(':') {
            Some((name, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                Target::Container(name.into(), Some(parse_port(p)?))
            }
            _ => Target::Container(rest.into(), None),
        });
    }
    if let Some(p) = t.strip_prefix("tcp:").or_else(|| t.strip_prefix("tcp/")) {
        return Ok(Target::Port(parse_port(p)?, Some(Proto::Tcp)));
    }
    if let Some(p) = t.strip_prefix("udp:").or_else(|| t.strip_prefix("udp/")) {
        return Ok(Target::Port(parse_port(p)?, Some(Proto::Udp)));
    }
    if let Some((p, pr)) = t.split_once('/') {
        let proto = match pr {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(format!("'{t}': expected PORT/tcp or PORT/udp")),
        };
        return Ok(Target::Port(parse_port(p)?, Some(proto)));
    }
    parse_port(t).map(|p| Target::Port(p, None)).map_err(|e| {
        format!(
            "{e}; TARGET is PORT, tcp:PORT, udp:PORT, container:NAME[:PORT] or pod:NS/NAME[:PORT]"
        )
    })
}

enum From {
    Localhost,
    Host,
    Outside(Option<String>),
    Container(String),
}

fn parse_from(s: &str) -> Result<From, String> {
    Ok(match s {
        "localhost" => From::Localhost,
        "host" => From::Host,
        "outside" => From::Outside(None),
        _ => {
            if let Some(ns) = s.strip_prefix("outside:") {
                From::Outside(Some(ns.into()))
            } else if let Some(c) = s.strip_prefix("container:") {
                From::Container(c.into())
            } else {
                return Err(format!(
                    "--from '{s}': expected localhost, host, outside, outside:NETNS or container:NAME"
                ));
            }
        }
    })
}

struct PacketSpec {
    proto: Option<Proto>,
    src: Option<IpAddr>,
    dst: IpAddr,
    dport: u16,
    iif: Option<String>,
}

/// `[tcp|udp] [SRC[:SPORT]] -> DST:DPORT [in IFACE]`; explain-nat's full syntax
/// (`PROTO SRC -> DST:PORT [in IF] [out IF] [mark N] [state S]`) is accepted too.
fn parse_packet(spec: &str) -> Result<PacketSpec, String> {
    if let Ok(p) = crate::nat::walk::Packet::parse(spec) {
        let proto = match p.proto.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(format!("doctor follows tcp and udp, not {other}")),
        };
        return Ok(PacketSpec {
            proto: Some(proto),
            src: Some(p.src),
            dst: p.dst,
            dport: p.dport.ok_or("the destination needs a port (DST:PORT)")?,
            iif: p.in_iface,
        });
    }
    let words: Vec<&str> = spec.split_whitespace().collect();
    let mut proto = None;
    let mut addrs: Vec<&str> = Vec::new();
    let mut iif = None;
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "tcp" => proto = Some(Proto::Tcp),
            "udp" => proto = Some(Proto::Udp),
            "->" | "to" | "from" => {}
            "in" | "iif" | "-i" => {
                iif = Some(
                    words
                        .get(i + 1)
                        .ok_or("'in' needs an interface name")?
                        .to_string(),
                );
                i += 1;
            }
            w => addrs.push(w),
        }
        i += 1;
    }
    let (src, dst) = match addrs.as_slice() {
        [d] => (None, *d),
        [s, d] => (Some(*s), *d),
        _ => return Err("expected '[tcp|udp] [SRC] -> DST:PORT [in IFACE]'".into()),
    };
    let split = |a: &str| -> Result<(IpAddr, Option<u16>), String> {
        if let Ok(ip) = a.parse::<IpAddr>() {
            return Ok((ip, None));
        }
        let (ip, p) = a
            .rsplit_once(':')
            .ok_or_else(|| format!("'{a}' is not ADDRESS[:PORT]"))?;
        let ip = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| format!("'{ip}' is not an IP address"))?;
        Ok((ip, Some(parse_port(p)?)))
    };
    let (dst, dport) = split(dst)?;
    let dport = dport.ok_or("the destination needs a port (DST:PORT)")?;
    let src = match src {
        Some(s) => Some(split(s)?.0),
        None => None,
    };
    Ok(PacketSpec {
        proto,
        src,
        dst,
        dport,
        iif,
    })
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Ok => paint("ok", "32"),
        Verdict::Warn => paint("WARN", "33"),
        Verdict::Fail => paint("FAIL", "1;31"),
    }
}

/// The human report: header, one block per hop with its evidence, probe, the one-line verdict.
pub(crate) fn render(r: &Report) -> String {
    let mut out = String::new();
    let packet_line = |label: &str, p: &doctor::Packet| {
        paint(
            &format!(
                "{label}: {} {} -> {}{} at {}\n",
                p.proto,
                p.src,
                std::net::SocketAddr::new(p.dst, p.dport),
                p.iif
                    .as_ref()
                    .map(|i| format!(" in {i}"))
                    .unwrap_or_default(),
                p.hook
            ),
            "2",
        )
    };
    if let Some(p) = &r.packet {
        out.push_str(&format!(
            "{}/{} from {} (host namespace {}){}\n",
            p.proto,
            p.dport,
            r.from,
            r.host_netns,
            if r.ipv6.is_some() {
                ", over IPv4 and IPv6"
            } else {
                ""
            }
        ));
        out.push_str(&packet_line("packet", p));
    }
    if let Some(p) = r.ipv6.as_ref().and_then(|f| f.packet.as_ref()) {
        out.push_str(&packet_line("packet over IPv6", p));
    }
    out.push('\n');
    let width = r
        .hops
        .iter()
        .map(|h| h.title.chars().count())
        .max()
        .unwrap_or(0);
    for h in &r.hops {
        let pad = " ".repeat(width - h.title.chars().count());
        let v = verdict_text(h.verdict);
        let vpad = " ".repeat(5 - verdict_plain_len(h.verdict));
        out.push_str(&format!("  {}{pad}  {v}{vpad} {}\n", h.title, h.summary));
        let indent = " ".repeat(width + 10);
        for e in &h.evidence {
            out.push_str(&paint(&format!("{indent}{e}\n"), "2"));
        }
    }
    let probes: Vec<_> = r
        .probe
        .iter()
        .chain(r.ipv6.iter().flat_map(|f| f.probe.as_ref()))
        .collect();
    if !probes.is_empty() {
        out.push('\n');
    }
    for p in probes {
        out.push_str(&format!(
            "  probe from {} to {}: {} ({} ms)\n",
            p.from_netns.as_deref().unwrap_or("-"),
            p.target,
            if p.ok {
                paint(&p.outcome, "32")
            } else {
                paint(&p.outcome, "31")
            },
            p.elapsed_ms
        ));
        if let Some(t) = &p.trace {
            match &t.drop {
                Some(d) => out.push_str(&format!(
                    "  trace: {}\n",
                    paint(&doctor::probe::drop_words(d), "31")
                )),
                None if !p.ok => out.push_str(&format!(
                    "  trace: {} packet(s) traced, no drop seen by a rule or the kernel\n",
                    t.packets
                )),
                None => {}
            }
            for n in &t.notes {
                out.push_str(&paint(&format!("  trace note: {n}\n"), "2"));
            }
        }
    }
    out.push('\n');
    let d = &r.diagnosis;
    if d.ok {
        out.push_str(&format!("{}\n", paint(&d.line, "1;32")));
    } else {
        out.push_str(&format!("{} {}\n", paint("broken:", "1;31"), d.line));
        match &d.fix {
            Some(f) => {
                out.push_str(&format!("fix: {}   # {}\n", f.command, f.summary));
                if let Some(t) = &f.then {
                    out.push_str(&format!("then: {}   # {}\n", t.command, t.summary));
                }
            }
            None => out.push_str("fix: no single command; see the evidence above\n"),
        }
    }
    out
}

fn verdict_plain_len(v: Verdict) -> usize {
    match v {
        Verdict::Ok => 2,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(parse_target("8080"), Ok(Target::Port(8080, None))));
        assert!(matches!(
            parse_target("udp:53"),
            Ok(Target::Port(53, Some(Proto::Udp)))
        ));
        assert!(matches!(
            parse_target("53/udp"),
            Ok(Target::Port(53, Some(Proto::Udp)))
        ));
        assert!(
            matches!(parse_target("container:web:80"), Ok(Target::Container(n, Some(80))) if n == "web")
        );
        assert!(
            matches!(parse_target("container:web"), Ok(Target::Container(n, None)) if n == "web")
        );
        assert!(
            matches!(parse_target("pod:web/shop-7d9f:80"), Ok(Target::Pod(n, Some(80))) if n == "pod:web/shop-7d9f")
        );
        assert!(
            matches!(parse_target("pod:web/shop-7d9f"), Ok(Target::Pod(n, None)) if n == "pod:web/shop-7d9f")
        );
        assert!(parse_target("pod:web/shop:0").is_err());
        assert!(parse_target("0").is_err());
        assert!(parse_target("x").is_err());
    }

    #[test]
    fn packets() {
        let p = parse_packet("tcp 203.0.113.7:4000 -> 192.0.2.1:8080 in eth0").unwrap();
        assert_eq!(p.dport, 8080);
        assert_eq!(p.iif.as_deref(), Some("eth0"));
        assert_eq!(p.src, Some("203.0.113.7".parse().unwrap()));
        let p = parse_packet("udp -> [::1]:53").unwrap();
        assert_eq!(p.proto, Some(Proto::Udp));
        assert!(parse_packet("tcp 1.2.3.4").is_err());
        let p =
            parse_packet("udp 10.0.0.9:5000 -> 10.0.0.1:53 in eth1 mark 0x10 state NEW").unwrap();
        assert_eq!(p.iif.as_deref(), Some("eth1"));
        assert!(parse_packet("icmp 10.0.0.9 -> 10.0.0.1").is_err());
        assert!(parse_packet("").is_err());
    }
}

/// Arguments of `doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// What to follow: PORT, tcp:PORT, udp:PORT, container:NAME[:PORT], or pod:NS/NAME[:PORT].
    pub target: Option<String>,
    /// Where the connection starts: localhost, host, outside, outside:NETNS (probe from that
    /// namespace), container:NAME.
    #[arg(long, default_value = "localhost", value_name = "SOURCE")]
    pub from: String,
    /// The packet instead of TARGET: '[tcp|udp] [SRC[:SPORT]] -> DST:DPORT [in IFACE]'.
    #[arg(long, value_name = "SPEC")]
    pub packet: Option<String>,
    /// The host namespace to diagnose (a lab's isolated host: NAME, PATH, pid:N); default: the current one.
    #[arg(long, short = 'n', value_name = "TARGET")]
    pub netns: Option<String>,
    /// The port is UDP (same as udp:PORT).
    #[arg(long)]
    pub udp: bool,
    /// Also connect for real from the source, inside its namespace, and report what happened.
    #[arg(long)]
    pub probe: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the snapshot the verdict was judged on (machine state, question, probe) to FILE.
    #[arg(long, value_name = "FILE")]
    pub save_snapshot: Option<std::path::PathBuf>,
    /// Judge a recorded snapshot instead of this machine (no root, nothing read live).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target", "packet", "netns", "probe", "save_snapshot"])]
    pub snapshot: Option<std::path::PathBuf>,
}

/// Examples and exit codes for `nettool doctor --help`.
pub(crate) const DOCTOR_HELP: &str = "Exit code 0 when the path is clear, 1 when something is broken (the last line says what\nand the command that fixes it).\n\nExamples:\n  nettool doctor 8080\n  nettool doctor 8080 --from outside --probe\n  nettool doctor udp:5353 --from container:web\n  nettool doctor container:web\n  nettool doctor --packet 'tcp 203.0.113.7 -> 192.0.2.1:8080 in eth0'\n  nettool doctor --netns nt-lab-host 8080 --probe --json";
