//! `nettool trace`: follow live packets of one flow through every namespace given, rule by
//! rule (nftrace), with the kernel's drop reason and the socket that received them.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::cmd::dns::{install_signal_handlers, STOP};
use crate::engine::Intent;
use crate::netns::NetNs;
use crate::output::paint;
use crate::trace::{self, Ending, Session, TraceFilter, TraceOptions, TracePoint, TracedPacket};

const TRACE_HELP: &str =
    "FILTER words all narrow the trace: PORT, tcp:PORT, udp:PORT, tcp, udp, icmp, an IPv4 or
IPv6 address, container:NAME (traces inside that container's namespace too, and packets to or
from its addresses). Ports and addresses match source or destination. DNAT rules whose port
matches are followed: their target port is traced as well (--no-follow-dnat to stop that).

Each packet is printed once per namespace it crossed: the rules that decided something
(verdict, rule text, the engine that owns the chain), the hooks it reached, and how it
ended: dropped by a rule, dropped by the kernel (skb:kfree_skb reason), delivered to a
socket (and its process), or sent on. NAT comes from the flow's conntrack entry in that
namespace (original and reply tuples), on the rule that set it up or as a 'conntrack:' line
where conntrack applied it to a later packet or an answer. A drop the kernel answered with a
TCP reset or an ICMP error is joined by that answer (the same skb, naming the packet's
addresses); other drops by time, protocol and stage: the tracepoint carries no namespace or
addresses, so a busy machine can pair the wrong one (the JSON 'join' field says how).

Nothing is left behind: a table 'inet nettool_trace_PID' in each namespace and a tracefs
instance 'nettool-trace-PID' are journaled in /run/nettool-trace/ before they are made and
removed on exit, Ctrl-C or SIGTERM, and by the next run after a SIGKILL (or --cleanup).
Legacy iptables rules (x_tables) are invisible to nf_tables tracing: the trace says so.

Examples:
  nettool trace 8080
  nettool trace tcp:8080 --netns nt-lab-host --netns nt-lab-web
  nettool trace container:web 80 --count 10
  nettool trace udp:53 --netns container:api --json --duration 30s
  nettool trace --cleanup";

/// Arguments of `trace`.
#[derive(Debug, Args)]
#[command(after_help = TRACE_HELP)]
pub(crate) struct TraceArgs {
    /// What to trace: PORT, tcp:PORT, udp:PORT, tcp|udp|icmp, ADDRESS, container:NAME.
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Trace in this namespace (repeatable: NAME, PATH, pid:N, container:NAME); default: the
    /// current one, plus the namespace of each container:NAME filter.
    #[arg(long, short = 'n', value_name = "TARGET")]
    pub netns: Vec<String>,
    /// One JSON object per packet (JSON lines), then a {"summary": ...} line.
    #[arg(long)]
    pub json: bool,
    /// Stop after N packets.
    #[arg(long, short = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_name = "TIME", value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,
    /// Do not read kernel drop reasons (skb:kfree_skb through tracefs).
    #[arg(long)]
    pub no_drops: bool,
    /// Do not add the targets of matching DNAT rules to the filter.
    #[arg(long)]
    pub no_follow_dnat: bool,
    /// Only remove what dead tracers left behind (their journals say what), then exit.
    #[arg(long, conflicts_with_all = ["filter", "netns", "count", "duration"])]
    pub cleanup: bool,
}

/// Run `nettool trace`.
pub(crate) fn run(args: TraceArgs) -> anyhow::Result<i32> {
    if args.cleanup {
        let rec = trace::journal::recover();
        if args.json {
            crate::output::print_json(&rec)?;
        } else if rec.is_empty() {
            println!("nothing left behind by earlier traces");
        } else {
            for r in &rec {
                println!(
                    "tracer pid {}: removed {} item(s){}",
                    r.pid,
                    r.removed.len(),
                    super::not_removed(r)
                );
            }
        }
        return Ok(0);
    }
    let (mut filter, containers) = TraceFilter::parse(&args.filter)?;
    let mut points = Vec::new();
    let targets: Vec<String> = if args.netns.is_empty() {
        vec!["current".to_string()]
    } else {
        args.netns.clone()
    };
    for t in &targets {
        points.push(TracePoint::open(t).with_context(|| format!("--netns {t}"))?);
    }
    // Every engine's containers (Docker, Podman, CNI, labs), read once: they resolve
    // container:NAME and name the namespaces traced.
    let intent = Intent::read();
    for c in &containers {
        let target = format!("container:{c}");
        let p = container_point(&intent, c).with_context(|| format!("filter {target}"))?;
        // Its addresses narrow the trace in the other namespaces.
        let addrs =
            p.ns.run(crate::netns::links::snapshot)
                .map_err(anyhow::Error::from)?
                .map_err(anyhow::Error::from)?
                .addresses;
        filter.addrs.extend(
            addrs
                .into_iter()
                .map(|a| a.address)
                .filter(|a| !a.is_loopback() && !is_link_local(a)),
        );
        if !points.iter().any(|q: &TracePoint| q.ns == p.ns) {
            points.push(p);
        }
    }
    // A published port: the container it is published to is where the flow ends.
    let mut auto = Vec::new();
    for (c, port) in published_to(&intent, &filter) {
        let Ok(p) = container_point(&intent, &c.name) else {
            continue;
        };
        if !points.iter().any(|q| q.ns == p.ns) {
            auto.push(format!(
                "port {port} is published to container {} ({}): tracing in its namespace too",
                c.name, c.engine
            ));
            points.push(p);
        }
    }
    name_containers(&intent, &mut points);
    let names: Vec<String> = points.iter().map(|p| p.name.clone()).collect();
    let opts = TraceOptions {
        filter,
        points,
        drops: !args.no_drops,
        follow_dnat: !args.no_follow_dnat,
        ..Default::default()
    };
    install_signal_handlers();
    let mut session = Session::start(opts)?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        let f = session.filter();
        let mut what: Vec<String> = f.ports.iter().map(|p| format!("port {p}")).collect();
        what.extend(f.addrs.iter().map(|a| a.to_string()));
        if let Some(p) = f.proto {
            what.insert(0, format!("{p:?}").to_lowercase());
        }
        eprintln!(
            "tracing {} in {} (Ctrl-C to stop)",
            if what.is_empty() {
                "every packet".to_string()
            } else {
                what.join(" ")
            },
            names.join(", ")
        );
        for n in auto
            .iter()
            .map(String::as_str)
            .chain(session.notes().iter().map(String::as_str))
        {
            eprintln!("note: {n}");
        }
    }
    let started = Instant::now();
    let mut printed = 0u64;
    let mut write_err = None;
    'outer: loop {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        for p in session.poll(Duration::from_millis(100)) {
            if let Err(e) = emit(&mut out, &p, args.json) {
                write_err = Some(e);
                break 'outer;
            }
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                break 'outer;
            }
        }
    }
    if write_err.is_none() && args.count.is_none_or(|n| printed < n) {
        for p in session.drain() {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            if emit(&mut out, &p, args.json).is_err() {
                break;
            }
            printed += 1;
        }
    }
    let report = session.finish()?;
    let summary = serde_json::json!({
        "packets": printed,
        "nft_overruns": report.nft_overruns,
        "nft_events_lost": report.nft_events_lost,
        "drops_lost": report.drops_lost,
        "drops_unjoined": report.drops_unjoined,
        "conntrack_read": report.conntrack_read,
        "notes": auto.iter().chain(report.notes.iter()).collect::<Vec<_>>(),
    });
    if args.json {
        let _ = writeln!(out, "{}", serde_json::json!({ "summary": summary }));
    } else {
        let _ = out.flush();
        eprintln!(
            "{printed} packet(s); trace events lost: {}; kernel drop events lost: {}; unrelated kernel drops ignored: {}",
            report.nft_events_lost, report.drops_lost, report.drops_unjoined
        );
    }
    Ok(0)
}

fn is_link_local(a: &std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v) => v.is_link_local(),
        std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The namespace of container NAME: from the engines' intent (its namespace file or its
/// process), else the Docker API lookup of the netns core.
fn container_point(intent: &Intent, name: &str) -> anyhow::Result<TracePoint> {
    if let Some(c) = intent.container(name) {
        let ns = match (&c.netns, c.pid.filter(|p| *p > 0)) {
            (Some(path), _) => NetNs::from_path(path),
            (None, Some(pid)) => NetNs::from_pid(pid),
            (None, None) => anyhow::bail!(
                "container {name} ({}) is not running: it has no network namespace",
                c.engine
            ),
        }?;
        return Ok(TracePoint {
            ns,
            name: format!("container:{}", c.name),
            container: Some(format!("{} ({})", c.name, c.engine)),
            firewall: None,
        });
    }
    Ok(TracePoint::open(&format!("container:{name}"))?)
}

/// The running containers that publish a port of the filter (with the protocol of the filter,
/// when it has one), and that port.
fn published_to<'a>(
    intent: &'a Intent,
    filter: &TraceFilter,
) -> Vec<(&'a crate::engine::Container, u16)> {
    let proto = filter.proto.map(|p| format!("{p:?}").to_lowercase());
    let mut out = Vec::new();
    for c in &intent.containers {
        if c.pid.is_none_or(|p| p == 0) && c.netns.is_none() {
            continue;
        }
        if let Some(b) = c.ports.iter().find(|b| {
            filter.ports.contains(&b.host_port) && proto.as_ref().is_none_or(|p| *p == b.proto)
        }) {
            out.push((c, b.host_port));
        }
    }
    out
}

/// Give each point the containers that live in its namespace (every engine's names).
fn name_containers(intent: &Intent, points: &mut [TracePoint]) {
    for p in points {
        if p.container.is_some() {
            continue;
        }
        let names: Vec<String> = intent
            .in_netns(p.ns.id().inode)
            .iter()
            .filter(|c| !c.infra)
            .map(|c| format!("{} ({})", c.name, c.engine))
            .collect();
        if !names.is_empty() {
            p.container = Some(names.join(", "));
        }
    }
}

fn emit(out: &mut impl Write, p: &TracedPacket, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, p).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render(p))?;
    }
    out.flush()
}

/// A packet as text: a header line, one line per rule, the ending.
pub(crate) fn render(p: &TracedPacket) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let place = match &p.container {
        Some(c) => format!("{} (container {c})", p.netns),
        None => p.netns.clone(),
    };
    let _ = writeln!(
        s,
        "{} {} -> {}{}{}  in {}{}{}  [{}]",
        p.proto,
        p.src,
        p.dst,
        p.flags
            .as_deref()
            .map(|f| format!(" {f}"))
            .unwrap_or_default(),
        p.nat
            .as_deref()
            .map(|n| format!(" (after NAT: {n})"))
            .unwrap_or_default(),
        paint(&place, "1"),
        p.iif
            .as_deref()
            .map(|i| format!(" iif {i}"))
            .unwrap_or_default(),
        if p.dont_fragment {
            format!(" len {} DF", p.length.unwrap_or(0))
        } else {
            String::new()
        },
        p.hooks.join(" > ")
    );
    // Rewrites no traced rule set up (conntrack applied an earlier packet's binding) go
    // where they happen: before the first rule of a later hook.
    let stage = |hook: &str| match hook {
        "prerouting" | "output" => 0,
        "input" | "forward" => 1,
        _ => 2,
    };
    let mut by_conntrack = p.rewrites.iter().filter(|n| !n.by_rule).peekable();
    let conntrack_line = |s: &mut String, n: &trace::conntrack::NatRewrite| {
        let _ = writeln!(
            s,
            "    {:<11} conntrack: {} {}  =>  {}",
            n.hook,
            n.kind.as_words(),
            n.before,
            n.after
        );
    };
    for h in &p.hops {
        let here = stage(h.hook.as_deref().unwrap_or(""));
        while let Some(n) = by_conntrack.next_if(|n| stage(&n.hook) < here) {
            conntrack_line(&mut s, n);
        }
        let what = match (h.handle, &h.rule, &h.iptables) {
            // iptables wrote it: its own words (nft cannot print every xt match/target).
            (Some(n), _, Some(ipt)) => format!("#{n} {ipt}"),
            (Some(n), Some(r), None) => format!("#{n} {r}"),
            (Some(n), None, None) => format!("#{n} (rule gone from the listing)"),
            (None, _, _) => format!("{:?}", h.kind).to_lowercase(),
        };
        let _ = writeln!(
            s,
            "    {:<11} {} {} {:<20} {:<12} {}  [{}]",
            h.hook.as_deref().unwrap_or("?"),
            h.family,
            h.table,
            h.chain,
            h.verdict,
            what,
            h.engine.as_str()
        );
        if let Some(n) = &h.nat {
            let _ = writeln!(
                s,
                "                {} {}  =>  {}",
                n.kind.as_words(),
                n.before,
                n.after
            );
        }
    }
    for n in by_conntrack {
        conntrack_line(&mut s, n);
    }
    if let Some(c) = &p.conntrack {
        let _ = writeln!(
            s,
            "    conntrack   original {}, reply {} (this packet: {})",
            c.original, c.reply, c.direction
        );
    }
    let end = match &p.ending {
        Ending::DroppedByRule {
            chain,
            handle,
            rule,
            iptables,
            engine,
        } => paint(
            &format!(
                "DROPPED by {} in {chain}{}  [{}]",
                handle.map_or("the chain policy".to_string(), |h| format!("rule #{h}")),
                iptables
                    .as_deref()
                    .or(rule.as_deref())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
                engine.as_str()
            ),
            "31",
        ),
        Ending::DroppedByKernel {
            reason,
            meaning,
            location,
        } => paint(
            &format!(
                "DROPPED by the kernel: {reason} at {location}{}",
                if meaning.is_empty() {
                    String::new()
                } else {
                    format!(" ({meaning})")
                }
            ),
            "31",
        ),
        Ending::Delivered { receiver } => match receiver {
            Some(r) => format!(
                "delivered to socket {} {}{}",
                r.local,
                r.state,
                if r.processes.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", r.processes.join(", "))
                }
            ),
            None => "delivered to the local stack (no matching socket seen)".to_string(),
        },
        Ending::Sent { oif } => format!(
            "sent out {}",
            oif.as_deref().unwrap_or("(interface unknown)")
        ),
        Ending::Forwarded { oif } => format!(
            "forwarded to {} (no postrouting chain saw it)",
            oif.as_deref().unwrap_or("?")
        ),
        Ending::Vanished { after } => format!(
            "no later hook saw it after {} and the kernel named no drop reason",
            after.as_deref().unwrap_or("?")
        ),
    };
    let _ = writeln!(s, "    => {end}");
    if let (Some(d), Ending::DroppedByRule { .. }) = (&p.kernel_drop, &p.ending) {
        let _ = writeln!(s, "       kernel: {} at {}", d.reason, d.location);
    }
    s
}
