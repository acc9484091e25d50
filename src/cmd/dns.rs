//! `nettool dns`: trace DNS lookups in one namespace, every namespace, or a pcap file.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::cli::parse_duration;
use crate::dns::capture::PcapOut;
use crate::dns::pair::{Hop, Lookup, NameSummary, Status, Summary};
use crate::dns::{self, docker, LiveOptions, LookupSink, Source, SourceStats};
use crate::netns::discover::{discover, DiscoverOptions};
use crate::netns::{NetNs, NsId};
use crate::output::{paint, Table};

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the capture cleanly so the summary (and the pcap) are written.
pub(crate) fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// "HH:MM:SS.mmm" (UTC) of a time in seconds since the epoch.
fn clock(t: f64) -> String {
    let ms = (t * 1000.0) as u64;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// The human line for one lookup.
pub(crate) fn render_line(l: &Lookup, timeout: Duration) -> String {
    let status = match l.status {
        Status::Answered | Status::AnswerOnly => {
            let rcode = l.rcode.clone().unwrap_or_default();
            if rcode == "NOERROR" {
                paint(&rcode, "32")
            } else {
                paint(&rcode, "31")
            }
        }
        Status::Timeout => paint("TIMEOUT", "31"),
        Status::Unanswered => paint("UNANSWERED", "33"),
        Status::Unreachable => paint("UNREACHABLE", "31"),
    };
    let latency = match (l.status, l.latency_ms) {
        (_, Some(ms)) => fmt_ms(ms),
        (Status::Timeout, None) => format!(">{}", fmt_ms(timeout.as_secs_f64() * 1000.0)),
        (Status::AnswerOnly, None) => "query not seen".into(),
        _ => "-".into(),
    };
    let answers = if l.answers.is_empty() {
        "-".to_string()
    } else {
        // Keep the line readable: stop at ~80 characters and say how many were left out.
        let mut text = String::new();
        let mut shown = 0;
        for a in &l.answers {
            let item = match a.rtype.as_str() {
                "A" | "AAAA" => a.data.clone(),
                t if a.data.chars().count() > 40 => {
                    format!("{t} {}...", a.data.chars().take(37).collect::<String>())
                }
                t => format!("{t} {}", a.data),
            };
            if shown > 0 && text.len() + item.len() > 80 {
                break;
            }
            if shown > 0 {
                text.push_str(", ");
            }
            text.push_str(&item);
            shown += 1;
        }
        if shown < l.answers.len() {
            text.push_str(&format!(" +{} more", l.answers.len() - shown));
        }
        text
    };
    let mut flags = Vec::new();
    if l.transport == dns::packet::Transport::Tcp {
        flags.push("tcp".to_string());
    }
    if l.truncated {
        flags.push(paint("TC", "33"));
    }
    if l.after_truncated {
        flags.push("after-TC".into());
    }
    if l.retries > 0 {
        flags.push(format!("retries={}", l.retries));
    }
    if let Some(real) = l.server_real {
        flags.push(format!("via {real}"));
    }
    for u in &l.upstream {
        let mut leg = format!(
            "upstream {} {} {}",
            u.server,
            u.rcode.as_deref().unwrap_or("no-answer"),
            u.latency_ms.map(fmt_ms).unwrap_or_default()
        );
        if u.hops.len() > 1 {
            leg.push_str(&format!(" (hops {})", render_hops(&u.hops)));
        }
        flags.push(leg);
    }
    if let Some(c) = l.on_behalf_of {
        flags.push(format!("for {c}"));
    }
    if let Some(why) = &l.icmp {
        flags.push(format!("icmp {why}"));
    }
    if l.hops.len() > 1 {
        flags.push(format!("hops {}", render_hops(&l.hops)));
    }
    let mut line = format!(
        "{}  {}  {} -> {}  {} {}  {}  {}  {}",
        clock(l.time),
        l.netns,
        l.client,
        l.server,
        l.qtype,
        if l.name.is_empty() { "?" } else { &l.name },
        status,
        latency,
        answers
    );
    if !flags.is_empty() {
        line.push_str("  [");
        line.push_str(&flags.join(" "));
        line.push(']');
    }
    line
}

/// Where a lookup was seen, nearest the client first: `ns/if latency`, with the addresses
/// where a NAT changed them and the outcome where it differs from the first hop's.
fn render_hops(hops: &[Hop]) -> String {
    let Some(first) = hops.first() else {
        return String::new();
    };
    let mut prev = (first.client, first.server);
    let mut parts = Vec::new();
    for h in hops {
        let mut p = match &h.interface {
            Some(i) => format!("{}/{i}", h.netns),
            None => h.netns.clone(),
        };
        if (h.client, h.server) != prev {
            if h.server == prev.1 {
                p.push_str(&format!(" {}", h.client));
            } else {
                p.push_str(&format!(" {} -> {}", h.client, h.server));
            }
            prev = (h.client, h.server);
        }
        if h.status != first.status || h.rcode != first.rcode {
            let what = match (h.status, &h.rcode) {
                (_, Some(r)) => r.clone(),
                (Status::Timeout, None) => "TIMEOUT".into(),
                (Status::Unreachable, None) => "UNREACHABLE".into(),
                _ => "UNANSWERED".into(),
            };
            p.push(' ');
            p.push_str(&what);
        }
        if let Some(ms) = h.latency_ms {
            p.push(' ');
            p.push_str(&fmt_ms(ms));
        }
        parts.push(p);
    }
    parts.join(" > ")
}

/// Prints lookups as they finish (buffered; flushed whenever the capture goes idle).
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    timeout: Duration,
    count: Option<u64>,
    emitted: u64,
    summary: Summary,
    error: Option<std::io::Error>,
}

impl LookupSink for Printer {
    fn lookup(&mut self, l: Lookup) -> bool {
        if self.error.is_some() {
            return false;
        }
        self.summary.add(&l);
        self.emitted += 1;
        let r = if self.json {
            serde_json::to_writer(&mut self.out, &l)
                .map_err(std::io::Error::from)
                .and_then(|_| writeln!(self.out))
        } else {
            writeln!(self.out, "{}", render_line(&l, self.timeout))
        };
        if let Err(e) = r {
            // A closed pipe (| head) ends the trace quietly.
            self.error = Some(e);
            return false;
        }
        self.count.is_none_or(|n| self.emitted < n)
    }

    fn idle(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }
}

/// The end-of-run report.
#[derive(Debug, Serialize)]
struct Report {
    lookups: u64,
    names: Vec<NameSummary>,
    sources: Vec<SourceStats>,
}

/// A capture source in each namespace, with the aliases of Docker's embedded resolver there
/// (each namespace's rules read once); Err says why capturing in that namespace failed.
fn open_sources(
    nss: Vec<NetNs>,
    timeout: Duration,
    no_docker: bool,
) -> Vec<Result<Source, String>> {
    let aliases = if no_docker {
        vec![Vec::new(); nss.len()]
    } else {
        docker::embedded_resolver_aliases(&nss.iter().collect::<Vec<_>>())
    };
    nss.iter()
        .zip(aliases)
        .map(|(ns, a)| {
            Source::open(ns, timeout, a).map_err(|e| format!("namespace {}: {e}", ns.label()))
        })
        .collect()
}

/// Run `nettool dns`.
pub(crate) fn run(a: DnsArgs) -> anyhow::Result<i32> {
    if a.count == Some(0) {
        return Ok(0);
    }
    install_signal_handlers();
    let json = a.json;
    let timeout = a.timeout;
    let count = a.count;
    let mut sink = Printer {
        out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
        json,
        timeout,
        count,
        emitted: 0,
        summary: Summary::default(),
        error: None,
    };
    let stats: Vec<SourceStats> = if let Some(path) = &a.read {
        let st = dns::read_file(path, a.timeout, &[], &mut sink)
            .with_context(|| format!("reading {}", path.display()))?;
        for w in &st.warnings {
            // stderr, so a JSON stdout stays parseable (the warning is in its summary too).
            eprintln!("nettool dns: warning: {}: {w}", path.display());
        }
        vec![st]
    } else {
        let no_docker = a.no_docker;
        let mut sources = Vec::new();
        if a.all_netns {
            let nss = discover(DiscoverOptions {
                skip_interfaces: true,
                skip_docker: false,
            })
            .iter()
            .filter_map(|info| info.open().ok())
            .collect();
            for s in open_sources(nss, timeout, no_docker) {
                match s {
                    Ok(s) => sources.push(s),
                    Err(e) => tracing::warn!("skipping {e}"),
                }
            }
            anyhow::ensure!(
                !sources.is_empty(),
                "could not capture in any namespace (capturing needs root)"
            );
        } else {
            let target = a.netns.as_deref().unwrap_or("current");
            let ns = NetNs::open(target).with_context(|| format!("--netns {target}"))?;
            let aliases = if no_docker {
                Vec::new()
            } else {
                docker::embedded_resolver_aliases(&[&ns]).remove(0)
            };
            let src =
                Source::open(&ns, timeout, aliases).with_context(|| format!("--netns {target}"))?;
            sources.push(src);
        }
        let mut pcap = match &a.pcap {
            Some(p) => Some(PcapOut::create(p).with_context(|| "--pcap")?),
            None => None,
        };
        let mut refresh = |have: &HashSet<NsId>| -> (Vec<Source>, Vec<NsId>) {
            let infos = discover(DiscoverOptions {
                skip_interfaces: true,
                skip_docker: false,
            });
            let now: HashSet<NsId> = infos.iter().map(|i| i.id).collect();
            let gone = have
                .iter()
                .filter(|id| !now.contains(id))
                .copied()
                .collect();
            let fresh = infos
                .iter()
                .filter(|i| !have.contains(&i.id))
                .filter_map(|i| i.open().ok())
                .collect();
            let added = open_sources(fresh, timeout, no_docker)
                .into_iter()
                .flatten()
                .collect();
            (added, gone)
        };
        let labels: Vec<String> = sources.iter().map(|s| s.label().to_string()).collect();
        eprintln!(
            "nettool dns: capturing in {} (Ctrl-C ends with a summary)",
            if labels.len() > 3 {
                format!("{} namespaces", labels.len())
            } else {
                labels.join(", ")
            }
        );
        let opts = LiveOptions {
            duration: a.duration,
            refresh_every: Duration::from_secs(2),
        };
        let st = dns::live(
            sources,
            &opts,
            &STOP,
            pcap.as_mut(),
            if a.all_netns {
                Some(&mut refresh)
            } else {
                None
            },
            &mut sink,
        )?;
        if let Some(p) = pcap {
            p.finish()?;
        }
        st
    };
    let (emitted, summary) = (sink.emitted, sink.summary);
    if let Some(e) = sink.error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(0);
        }
        return Err(e).context("writing to stdout");
    }
    if a.no_summary {
        return Ok(0);
    }
    let report = Report {
        lookups: emitted,
        names: summary.rows(),
        sources: stats,
    };
    if a.json {
        println!("{}", serde_json::json!({ "summary": report }));
    } else {
        print_summary(&report);
    }
    Ok(0)
}

fn print_summary(r: &Report) {
    let mut t = Table::new(&["NAME", "COUNT", "ERRORS", "P50", "P99", "SLOWEST SERVER"]);
    for n in &r.names {
        t.row(vec![
            if n.name.is_empty() {
                "?".into()
            } else {
                n.name.clone()
            },
            n.count.to_string(),
            n.errors.to_string(),
            n.p50_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
            n.p99_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
            match (n.slowest_server, n.slowest_ms) {
                (Some(s), Some(ms)) => format!("{s} ({})", fmt_ms(ms)),
                _ => "-".into(),
            },
        ]);
    }
    println!();
    if !t.is_empty() {
        print!("{}", t.render());
    }
    let (q, ans, dup, bad, drops, frames) = r.sources.iter().fold((0, 0, 0, 0, 0, 0), |acc, s| {
        (
            acc.0 + s.pairing.queries,
            acc.1 + s.pairing.answers,
            acc.2 + s.pairing.duplicate_answers,
            acc.3 + s.pairing.malformed,
            acc.4 + s.kernel_drops,
            acc.5 + s.frames,
        )
    });
    println!(
        "{} lookups ({} queries, {} answers, {} duplicate answers, {} malformed) from {} frames in {}; kernel dropped {}",
        r.lookups,
        q,
        ans,
        dup,
        bad,
        frames,
        match r.sources.as_slice() {
            [one] => one.netns.clone(),
            many => format!("{} namespaces", many.len()),
        },
        drops
    );
    // Where lookups were seen: one lookup crossing three namespaces is a sighting in each.
    let mut seen: Vec<(&str, u64)> = r
        .sources
        .iter()
        .filter(|s| s.pairing.sightings > 0)
        .map(|s| (s.netns.as_str(), s.pairing.sightings))
        .collect();
    seen.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    if !seen.is_empty() {
        let total: u64 = seen.iter().map(|s| s.1).sum();
        println!(
            "sightings per namespace ({total}): {}",
            seen.iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Examples and notes for `nettool dns --help`.
pub(crate) const DNS_HELP: &str =
    "Each line: time, namespace, client -> server, type, name, rcode, latency, answers,
then flags: tcp, TC (truncated), after-TC (the TCP retry), retries=N, via REAL (Docker's DNAT),
upstream SERVER RCODE MS (the resolver's own query), for CLIENT (a resolver's upstream query).
A summary per name follows on exit (Ctrl-C, --count, --duration).

Examples:
  nettool dns                                  # the current namespace
  nettool dns --netns web                      # a named namespace (or pid:N, container:NAME)
  nettool dns --all-netns --json               # every namespace, JSON lines
  nettool dns --netns container:api --pcap dns.pcap --duration 30s
  nettool dns --read capture.pcap              # explain a capture made elsewhere (tcpdump -w)
  nettool dns --count 1 --timeout 2s           # stop after one lookup";

/// Arguments of `dns`.
#[derive(Debug, Args)]
pub(crate) struct DnsArgs {
    /// Capture in this namespace: NAME, PATH, pid:N, container:NAME (default: the current one).
    #[arg(long, short = 'n', value_name = "TARGET")]
    pub netns: Option<String>,
    /// Watch every namespace on the machine at once (new ones are picked up as they appear).
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
    /// Print one JSON object per lookup (and a final {"summary": ...} line).
    #[arg(long)]
    pub json: bool,
    /// Also write every captured DNS packet to this pcap file (raw IP link type).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
    /// Explain a pcap or pcapng file instead of capturing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["netns", "all_netns", "pcap", "duration"])]
    pub read: Option<std::path::PathBuf>,
    /// Stop after N lookups.
    #[arg(long, short = 'c', value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Report a query as a timeout when no answer came within this wait.
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Do not print the per-name summary at the end.
    #[arg(long)]
    pub no_summary: bool,
    /// Do not read nat rules to recognise Docker's embedded resolver.
    #[arg(long)]
    pub no_docker: bool,
}
