//! `nettool capture`: packets of many namespaces and interfaces into one pcapng, or a live
//! one-line-per-packet view, or JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::capture::decode::{summarize, PacketSummary};
use crate::capture::filter::Filter;
use crate::capture::pcapng::{InterfaceDesc, Rotation};
use crate::capture::ring::RingSize;
use crate::capture::{
    self, CaptureError, CaptureOptions, InterfaceStats, Limits, Packet, PcapngSink, Sink,
};
use crate::cli::parse_duration;

/// Examples shown under `nettool capture --help`.
pub(crate) const CAPTURE_HELP: &str = "\
Examples:
  nettool capture --netns container:web -w web.pcapng         # one container, every interface
  nettool capture --netns container:web --netns container:db port 5432
  nettool capture --lab tour -i eth0 -c 20                      # every container of a lab, live view
  nettool capture --all-netns -w all.pcapng -C 100 -W 5         # everything, 5 files of 100 MB
  nettool capture --lab tour --follow -w flow.pcapng tcp port 8080   # NAT legs stitched (comments)
  nettool capture --read flow.pcapng                            # print a capture back

The filter is tcpdump's language (pcap-filter(7)), compiled by `tcpdump -ddd` at start and run in
the kernel. Interfaces are named NAMESPACE/IFNAME: host/docker0, container:web/eth0, lab:LAB/web/eth0.";

/// Arguments of `capture`.
#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    /// Namespace to capture in (repeatable): NAME, path, pid:N, container:NAME (Docker, Podman,
    /// CNI, lab). None: the current namespace.
    #[arg(long = "netns", short = 'n', value_name = "TARGET")]
    pub netns: Vec<String>,
    /// A lab's host namespace and every container of it (repeatable).
    #[arg(long, value_name = "NAME")]
    pub lab: Vec<String>,
    /// Every namespace on the machine; namespaces that appear later are added.
    #[arg(long)]
    pub all_netns: bool,
    /// Interface to capture on (repeatable; default: all, new ones included).
    #[arg(
        short = 'i',
        long = "interface",
        value_name = "IFNAME",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// Write a pcapng file (mode 0600) instead of printing.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many packets.
    #[arg(short = 'c', long = "count", value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (10s, 2m).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Start a new file after this many megabytes (1,000,000 bytes): FILE, FILE1, FILE2...
    #[arg(short = 'C', long = "file-size", value_name = "MB")]
    pub file_size: Option<f64>,
    /// With -C, keep at most this many files (names reused in a ring).
    #[arg(short = 'W', long = "files", value_name = "N", requires = "file_size")]
    pub files: Option<u32>,
    /// Bytes kept per packet.
    #[arg(short = 's', long = "snaplen", default_value_t = 262_144)]
    pub snaplen: u32,
    /// Ring size per interface, in KiB (rounded to 256 KiB blocks, at least 2). Default: 8 MiB
    /// for the first 8 interfaces, 2 MiB for each one after.
    #[arg(short = 'B', long = "buffer-size", value_name = "KiB")]
    pub buffer_kib: Option<usize>,
    /// Stitch the legs of each flow across NAT with conntrack: the original and reply tuples
    /// go in every packet's comment (and the live view).
    #[arg(long)]
    pub follow: bool,
    /// JSON lines: one per packet, then the summary.
    #[arg(long)]
    pub json: bool,
    /// Print a pcapng file back (the live view's format) instead of capturing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["write", "netns", "lab", "all_netns"])]
    pub read: Option<PathBuf>,
    /// Filter expression (tcpdump syntax), e.g. `tcp port 80 and host 172.17.0.2`.
    #[arg(value_name = "EXPRESSION", trailing_var_arg = true)]
    pub expression: Vec<String>,
}

/// "HH:MM:SS.uuuuuu" (UTC).
fn clock(ts: Duration) -> String {
    let us = ts.as_micros() as u64;
    let day = us % 86_400_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3_600_000_000,
        day / 60_000_000 % 60,
        day / 1_000_000 % 60,
        day % 1_000_000
    )
}

/// One line like tcpdump's: time, interface, protocol, addresses, flags, length.
fn line(
    ts: Duration,
    iface: &str,
    s: &PacketSummary,
    wire_len: u32,
    comment: Option<&str>,
) -> String {
    let addr = |ip: Option<std::net::IpAddr>, port: Option<u16>| match (ip, port) {
        (Some(ip), Some(p)) => format!("{ip}.{p}"),
        (Some(ip), None) => ip.to_string(),
        _ => "?".into(),
    };
    let net = match s.network.as_str() {
        "ip" => "IP",
        "ip6" => "IP6",
        "arp" => "ARP",
        other => other,
    };
    let mut l = format!(
        "{} {iface} {net} {} > {}:",
        clock(ts),
        addr(s.src, s.sport),
        addr(s.dst, s.dport)
    );
    if let Some(t) = &s.transport {
        l.push(' ');
        l.push_str(t);
    }
    if let Some(f) = &s.flags {
        l.push_str(&format!(" Flags {f}"));
    }
    if let Some(i) = &s.icmp {
        l.push_str(&format!(" {i}"));
    }
    l.push_str(&format!(", length {}", s.payload_len));
    if s.transport.is_none() {
        l.push_str(&format!(" (frame {wire_len})"));
    }
    if let Some(c) = comment {
        l.push_str(&format!("  [{c}]"));
    }
    l
}

/// One packet as a JSON line.
#[derive(Serialize)]
struct JsonPacket<'a> {
    ts: f64,
    interface: &'a str,
    wire_len: u32,
    #[serde(flatten)]
    summary: &'a PacketSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<&'a str>,
}

/// Says on stderr when every socket is reading (like tcpdump's "listening on").
struct Announce<S>(S);

impl<S: Sink> Sink for Announce<S> {
    fn interface(&mut self, id: u32, d: &InterfaceDesc) -> Result<(), CaptureError> {
        self.0.interface(id, d)
    }
    fn started(&mut self, n: usize) {
        eprintln!("capturing on {n} interfaces (Ctrl-C to stop)");
    }
    fn packet(&mut self, p: &Packet<'_>) -> Result<(), CaptureError> {
        self.0.packet(p)
    }
    fn block_done(&mut self) -> Result<(), CaptureError> {
        self.0.block_done()
    }
    fn ordered(&self) -> bool {
        self.0.ordered()
    }
    fn finish(&mut self, stats: &[InterfaceStats]) -> Result<(), CaptureError> {
        self.0.finish(stats)
    }
}

/// The live view and --json: rendered here, the core hands over packets only.
struct Printer {
    json: bool,
    names: Vec<String>,
    links: Vec<u16>,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Sink for Printer {
    fn interface(&mut self, id: u32, d: &InterfaceDesc) -> Result<(), CaptureError> {
        let id = id as usize;
        if self.names.len() <= id {
            self.names.resize(id + 1, String::new());
            self.links.resize(id + 1, 1);
        }
        self.names[id] = d.name.clone();
        self.links[id] = d.linktype;
        Ok(())
    }

    fn packet(&mut self, p: &Packet<'_>) -> Result<(), CaptureError> {
        let s = summarize(p.link, p.data);
        let name = self
            .names
            .get(p.interface as usize)
            .map(String::as_str)
            .unwrap_or("?");
        let text = if self.json {
            serde_json::to_string(&JsonPacket {
                ts: p.ts.as_secs_f64(),
                interface: name,
                wire_len: p.wire_len,
                summary: &s,
                flow: p.comment,
            })
            .unwrap_or_default()
        } else {
            line(p.ts, name, &s, p.wire_len, p.comment)
        };
        // A closed pipe (| head) ends the capture quietly.
        if writeln!(self.out, "{text}")
            .and_then(|_| self.out.flush())
            .is_err()
        {
            crate::cmd::dns::STOP.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn block_done(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }

    fn ordered(&self) -> bool {
        true
    }

    fn finish(&mut self, _stats: &[InterfaceStats]) -> Result<(), CaptureError> {
        let _ = self.out.flush();
        Ok(())
    }
}

fn read_back(path: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    let packets = capture::read_file(path)?;
    let mut out = std::io::stdout().lock();
    for p in &packets {
        let text = if json {
            serde_json::to_string(&JsonPacket {
                ts: p.ts.as_secs_f64(),
                interface: &p.interface,
                wire_len: p.wire_len,
                summary: &p.summary,
                flow: p.comment.as_deref(),
            })?
        } else {
            line(
                p.ts,
                &p.interface,
                &p.summary,
                p.wire_len,
                p.comment.as_deref(),
            )
        };
        if writeln!(out, "{text}").is_err() {
            break;
        }
    }
    Ok(0)
}

/// Run `nettool capture`.
pub(crate) fn run(a: CaptureArgs) -> anyhow::Result<i32> {
    if let Some(path) = &a.read {
        return read_back(path, a.json);
    }
    let expr = a.expression.join(" ");
    let filter = if expr.trim().is_empty() {
        None
    } else {
        Some(Filter::compile(&expr, a.snaplen)?)
    };
    let opts = CaptureOptions {
        targets: a.netns.clone(),
        labs: a.lab.clone(),
        all_netns: a.all_netns,
        interfaces: a.interfaces.clone(),
        filter,
        snaplen: a.snaplen,
        ring: a
            .buffer_kib
            .map(|k| RingSize::with_total(k.saturating_mul(1024))),
        follow: a.follow,
        ..CaptureOptions::default()
    };
    let limits = Limits {
        count: a.count,
        duration: a.duration,
    };
    crate::cmd::dns::install_signal_handlers();
    let stop = &crate::cmd::dns::STOP;
    let (summary, files) = match &a.write {
        Some(path) => {
            let rotation = Rotation {
                max_bytes: a.file_size.map(|mb| (mb * 1_000_000.0) as u64),
                max_files: a.files,
            };
            let mut sink = Announce(PcapngSink::create(path, rotation)?);
            let s = capture::run(&opts, limits, stop, &mut sink)
                .with_context(|| format!("capture to {}", path.display()))?;
            (s, sink.0.files())
        }
        None => {
            let mut sink = Announce(Printer {
                json: a.json,
                names: Vec::new(),
                links: Vec::new(),
                out: std::io::BufWriter::new(std::io::stdout()),
            });
            (capture::run(&opts, limits, stop, &mut sink)?, Vec::new())
        }
    };
    if a.json {
        #[derive(Serialize)]
        struct End<'a> {
            summary: &'a capture::Summary,
            files: &'a [PathBuf],
        }
        println!(
            "{}",
            serde_json::to_string(&End {
                summary: &summary,
                files: &files,
            })?
        );
    } else {
        // Like tcpdump: on stderr, so the live view on stdout stays clean.
        let mut e = std::io::stderr().lock();
        for f in &files {
            let _ = writeln!(e, "wrote {}", f.display());
        }
        let _ = writeln!(
            e,
            "{} packets captured on {} interfaces\n{} packets received by filter\n{} packets dropped by kernel",
            summary.captured,
            summary.interfaces.len(),
            summary.received_by_filter,
            summary.dropped_by_kernel
        );
        for i in summary
            .interfaces
            .iter()
            .filter(|i| i.dropped_by_kernel > 0)
        {
            let _ = writeln!(e, "  {}: {} dropped by kernel", i.name, i.dropped_by_kernel);
        }
    }
    Ok(0)
}
