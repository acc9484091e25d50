//! The command line: every command's arguments, help text and examples (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cmd::explain_nat::ExplainNatArgs;
use crate::cmd::lab_daemon::LabDaemonArgs;
use crate::cmd::labs::LabsArgs;
use crate::cmd::serve::ServeArgs;
use crate::cmd::setup::SetupArgs;
use crate::cmd::teardown::TeardownArgs;

/// Debug container networking on Linux: namespaces, veths, NAT, DNS, proxies, labs.
#[derive(Debug, Parser)]
#[command(name = "nettool", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Examples:\n  nettool netns list\n  nettool netns inspect web\n  nettool netns exec pid:1234 -- ss -tlnp\n\nRun as root: entering namespaces needs CAP_SYS_ADMIN."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, inspect and enter network namespaces.
    #[command(subcommand)]
    Netns(NetnsCommand),

    /// The other end of a veth (interface, namespace, processes, container), both ways.
    #[command(
        after_help = "IFACE is looked up in the current namespace, or in --netns TARGET. A namespace TARGET\n(container:web, pid:N, a name under /run/netns) instead of IFACE gives the host-side\nveth of each of its interfaces. Non-veth interfaces are described with their master,\nparent, ports or children.\n\nExamples:\n  nettool peer veth10bbd40\n  nettool peer container:web\n  nettool peer --netns web eth0\n  nettool peer --all\n  nettool peer --all --json | jq '.[] | select(.peer.namespace.containers != [])'"
    )]
    Peer(PeerArgs),

    /// Why a published port does (not) reach its container: every hop with evidence, the fix.
    #[command(
        after_help = "Exit code 0 when the path is clear, 1 when something is broken (the last line says what\nand the command that fixes it).\n\nExamples:\n  nettool doctor 8080\n  nettool doctor 8080 --from outside --probe\n  nettool doctor udp:5353 --from container:web\n  nettool doctor container:web\n  nettool doctor --packet 'tcp 203.0.113.7 -> 192.0.2.1:8080 in eth0'\n  nettool doctor --netns nt-lab-host 8080 --probe --json"
    )]
    Doctor(DoctorArgs),

    /// Draw the namespaces, bridges, veth pairs and published ports as a picture.
    #[command(
        after_help = "DOT is the base format; svg and png are rendered by Graphviz's `dot` (Debian package\ngraphviz). Mermaid pastes into Markdown. text is a tree for terminals. --json is the graph.\n\nBy default it draws what you are looking at: inside a lab's host namespace, that lab; else\nthe current namespace and its neighbours (on a Docker host: the host and its containers).\n\nExamples:\n  nettool topology\n  nettool topology --all --format svg -o host.svg\n  nettool topology --netns container:web --format mermaid\n  nettool topology --lab demo --format png -o demo.png\n  nettool topology --json | jq '.edges[] | select(.kind == \"veth\")'"
    )]
    Topology(TopologyArgs),

    /// NAT and filter rules in plain words, and a packet walk through them.
    #[command(
        name = "explain-nat",
        after_help = crate::cmd::explain_nat::EXPLAIN_NAT_HELP
    )]
    ExplainNat(ExplainNatArgs),

    /// Forward ports (TCP/UDP, ranges, across namespaces) and show what passes; a docker-proxy drop-in.
    #[command(after_help = PROXY_HELP)]
    Proxy(Box<ProxyArgs>),

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  nettool completions bash > /etc/bash_completion.d/nettool"
    )]
    Completions(CompletionsArgs),

    /// Trace DNS queries and answers, paired, with latency, in any namespace (Docker DNS aware).
    #[command(after_help = DNS_HELP)]
    Dns(DnsArgs),

    /// Build a complete Docker-style bridge network lab (no Docker needed).
    #[command(after_help = crate::cmd::setup::SETUP_HELP)]
    Setup(SetupArgs),

    /// Remove a lab exactly as its journal says (a second teardown is a no-op).
    #[command(
        after_help = "Examples:\n  nettool teardown              # the default lab, 'nettool'\n  nettool teardown mylab --json"
    )]
    Teardown(TeardownArgs),

    /// Every lab on this machine: host namespace, state, health (processes alive, namespaces there).
    #[command(
        after_help = "Examples:\n  nettool labs\n  nettool labs --json | jq '.[] | select(.problems != [])'"
    )]
    Labs(LabsArgs),

    /// Tiny built-in services for lab containers: http, echo (tcp), udp-echo.
    #[command(
        after_help = "Examples:\n  nettool serve http 80\n  nettool serve echo 7 --bind 127.0.0.1\n  nettool serve udp-echo 5353\n  nettool netns exec mylab-web -- nettool serve http 8000"
    )]
    Serve(ServeArgs),

    /// Capture packets in many namespaces at once into one pcapng, interfaces named by container.
    #[command(after_help = crate::cmd::capture::CAPTURE_HELP)]
    Capture(crate::cmd::capture::CaptureArgs),

    /// Follow live packets rule by rule: where the kernel dropped them, which rule, who wrote it.
    Trace(crate::cmd::trace::TraceArgs),

    /// Internal: the lab daemon (embedded DNS and supervised services) that setup starts.
    #[command(hide = true)]
    LabDaemon(LabDaemonArgs),
}

/// `nettool netns ...`
#[derive(Debug, Subcommand)]
pub enum NetnsCommand {
    /// Every network namespace on the machine: inode, names, nsid, processes, container, interfaces.
    #[command(
        after_help = "Examples:\n  nettool netns list\n  nettool netns list --json | jq '.[].names'"
    )]
    List(NetnsListArgs),

    /// What `ip addr`, `ip route`, `ss -tulpn` and `sysctl` would show inside a namespace.
    #[command(
        after_help = "TARGET is a name (/run/netns/NAME), a path, pid:N, container:NAME, or a bare\nword tried as name, pid, container in that order.\n\nExamples:\n  nettool netns inspect web\n  nettool netns inspect pid:4242 --json\n  nettool netns inspect container:redis"
    )]
    Inspect(NetnsInspectArgs),

    /// Run a command inside a namespace (like `ip netns exec` / `nsenter -n -t PID`).
    #[command(
        after_help = "The command's exit code is passed through.\n\nExamples:\n  nettool netns exec web -- curl -s 127.0.0.1:80\n  nettool netns exec --sys pid:4242 -- ls /sys/class/net"
    )]
    Exec(NetnsExecArgs),
}

/// Arguments of `netns list`.
#[derive(Debug, Args)]
pub struct NetnsListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Do not enter each namespace to count its interfaces (faster).
    #[arg(long)]
    pub no_interfaces: bool,
}

/// Arguments of `netns inspect`.
#[derive(Debug, Args)]
pub struct NetnsInspectArgs {
    /// The namespace: NAME, PATH, pid:N, container:NAME.
    pub target: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show established connections too, not only listeners.
    #[arg(long, short = 'a')]
    pub all_sockets: bool,
}

/// Arguments of `netns exec`.
#[derive(Debug, Args)]
pub struct NetnsExecArgs {
    /// The namespace: NAME, PATH, pid:N, container:NAME.
    pub target: String,
    /// Also give the command its own /sys (and /etc/netns/NAME files), like `ip netns exec`.
    #[arg(long = "sys")]
    pub remount_sys: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Arguments of `peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// The interface (or a namespace TARGET: container:NAME, pid:N, NAME).
    #[arg(required_unless_present = "all")]
    pub iface: Option<String>,
    /// Look IFACE up in this namespace instead of the current one (NAME, PATH, pid:N, container:NAME).
    #[arg(long, short = 'n', value_name = "TARGET")]
    pub netns: Option<String>,
    /// One table of every veth pair on the machine (with --netns: the pairs with an end there).
    #[arg(long, conflicts_with = "iface")]
    pub all: bool,
    /// Do not ask the container engines (Docker, Podman, CNI cache, labs) for names.
    #[arg(long)]
    pub no_docker: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

const DNS_HELP: &str =
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
pub struct DnsArgs {
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

/// Parse "10s", "500ms", "2m", "1h" or a bare number of seconds ("1.5").
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "us" => 0.000_001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    std::time::Duration::try_from_secs_f64(n * mult).map_err(|e| format!("'{s}': {e}"))
}

/// Arguments of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// What to follow: PORT, tcp:PORT, udp:PORT, or container:NAME[:PORT].
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

/// Output formats of `topology`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyFormat {
    /// A text tree.
    Text,
    /// Graphviz DOT source.
    Dot,
    /// SVG rendered by `dot`.
    Svg,
    /// PNG rendered by `dot`.
    Png,
    /// A Mermaid flowchart.
    Mermaid,
}

/// Arguments of `topology`.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    pub format: TopologyFormat,
    /// Write to this file instead of stdout (needed for png on a terminal).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Only this namespace and its neighbours (NAME, PATH, pid:N, container:NAME).
    #[arg(long, short = 'n', value_name = "TARGET", conflicts_with_all = ["lab", "all"])]
    pub netns: Option<String>,
    /// Only the namespaces of this lab (`nettool setup --name NAME`).
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub lab: Option<String>,

    /// The whole machine: every namespace (by default: the lab whose host is this namespace,
    /// else this namespace and its neighbours)
    #[arg(long)]
    pub all: bool,
    /// Also draw namespaces that hold nothing but lo.
    #[arg(long)]
    pub include_empty: bool,
    /// Do not read NAT rules (published ports then come from userland proxies only).
    #[arg(long)]
    pub no_nat: bool,
    /// Do not ask the container engines (Docker, Podman, CNI cache, labs) for names.
    #[arg(long)]
    pub no_docker: bool,
    /// Print the graph (nodes and edges) as JSON.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// Examples and notes for `nettool proxy --help`.
const PROXY_HELP: &str =
    "SPEC is [tcp:|udp:]LISTEN=TARGET with LISTEN = [IP:]PORT[-PORT] and TARGET = IP[:PORT[-PORT]];
IPv6 goes in brackets ([::1]:8080). A LISTEN without an IP listens on 0.0.0.0 and [::].
Without --dump/--hex/--pcap/--streams/--json bytes move with splice(2) and are never copied.
SIGUSR1 logs the counters; SIGINT/SIGTERM stop (exit 0) after logging them.

Examples:
  nettool proxy 8080 172.19.0.2:80
  nettool proxy --dump 8080 172.19.0.2:80
  nettool proxy -p 8080=172.19.0.2:80 -p udp:5353=172.19.0.3:53 -p 9000-9099=10.0.0.5:9000-9099
  nettool proxy --listen-netns host --target-netns web 8080 127.0.0.1:80
  nettool proxy --hex --dump-file /tmp/dump.txt --pcap /tmp/p.pcap 6379 172.19.0.4:6379
  nettool proxy --pcap /tmp/p.pcap --pcap-max-mb 100 --pcap-files 5 8080 172.19.0.2:80
  nettool proxy --json --pcap /tmp/dns.pcap udp:53 172.19.0.5:53
  nettool proxy --syslog 8080 172.19.0.2:80       (log to /dev/log, facility daemon)

docker-proxy drop-in: symlink the binary as docker-proxy and give dockerd
--userland-proxy-path=/path/to/docker-proxy. It takes docker-proxy's flags, including
-use-listen-fd (the socket on fd 4), and answers on fd 3. Logging and dumping come from
the environment or /etc/nettool/docker-proxy.toml (NETTOOL_PROXY_CONFIG):
  NETTOOL_PROXY_LOG=FILE|syslog|syslog:SOCKET   (key log)
  NETTOOL_PROXY_DUMP=text|hex|json, NETTOOL_PROXY_DUMP_FILE, NETTOOL_PROXY_PCAP,
  NETTOOL_PROXY_PCAP_MAX_MB, NETTOOL_PROXY_PCAP_FILES, NETTOOL_PROXY_STREAMS
  e.g. NETTOOL_PROXY_LOG=syslog docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 \\
         -container-ip 172.17.0.2 -container-port 80";

/// Arguments of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Listen side of one mapping: [IP:]PORT[-PORT].
    pub listen: Option<String>,
    /// Target of that mapping: IP:PORT[-PORT].
    pub target: Option<String>,
    /// A mapping [tcp:|udp:]LISTEN=TARGET (repeatable).
    #[arg(short = 'p', long = "map", value_name = "SPEC")]
    pub maps: Vec<String>,
    /// The positional LISTEN TARGET pair is UDP.
    #[arg(long)]
    pub udp: bool,
    /// Listen inside this namespace (name, path, pid:N, container:NAME).
    #[arg(long, value_name = "NS")]
    pub listen_netns: Option<String>,
    /// Connect to the backend from inside this namespace.
    #[arg(long, value_name = "NS")]
    pub target_netns: Option<String>,
    /// Append log lines here instead of stderr (file mode 0600).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["syslog", "syslog_socket"])]
    pub log_file: Option<PathBuf>,
    /// Send log lines to syslog (facility daemon, tag nettool-proxy) through /dev/log.
    #[arg(long)]
    pub syslog: bool,
    /// Send log lines to the syslog daemon listening on this unix datagram socket (implies --syslog).
    #[arg(long, value_name = "PATH")]
    pub syslog_socket: Option<PathBuf>,
    /// When every listener is bound write "0\n" to this fd and close it; on failure "1\n<error>".
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<i32>,
    /// Dump payloads as text, like socat -v (L7 decoding on).
    #[arg(long)]
    pub dump: bool,
    /// Dump payloads as hex, like socat -x.
    #[arg(long)]
    pub hex: bool,
    /// Write a pcap with synthesised headers for both legs of every connection.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Cap each pcap file at this many megabytes, decimals allowed (0.5 = 500 kB); then rotate
    /// (see --pcap-files) or, with one file, stop the capture (forwarding goes on).
    // Parsed to bytes.
    #[arg(long, value_name = "MB", value_parser = parse_megabytes)]
    pub pcap_max_mb: Option<u64>,
    /// Keep this many pcap files when rotating (FILE, FILE.1, ...).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub pcap_files: u32,
    /// Write one file per connection and direction into DIR (like tcpflow).
    #[arg(long, value_name = "DIR")]
    pub streams: Option<PathBuf>,
    /// A JSON-lines event stream (opens, data sizes, L7 decodes, closes) on stdout or --dump-file.
    #[arg(long)]
    pub json: bool,
    /// Write the --dump/--hex/--json output here (appended, mode 0600) instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub dump_file: Option<PathBuf>,
    /// Do not decode HTTP/TLS/DNS/Redis in the dump.
    #[arg(long)]
    pub no_decode: bool,
    /// Forget a UDP flow after this many idle seconds.
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pub udp_timeout: u64,
    /// Events queued for the dump writer before the proxy waits (lossless back-pressure).
    #[arg(long, value_name = "N", default_value_t = 1024, hide = true)]
    pub dump_queue: usize,
    /// Runtime threads: 1 serves everything on one thread; more spread connections over cores.
    #[arg(long, value_name = "N", env = "NETTOOL_PROXY_THREADS", hide = true)]
    pub threads: Option<usize>,
}

/// `--pcap-max-mb`: megabytes (10^6 bytes, decimals allowed) to a byte count.
fn parse_megabytes(s: &str) -> Result<u64, String> {
    match s.trim().parse::<f64>() {
        Ok(mb) if mb.is_finite() && mb * 1e6 >= 1000.0 && mb <= 1e9 => Ok((mb * 1e6) as u64),
        _ => Err(format!(
            "'{s}' is not a size in megabytes from 0.001 to 1000000000 (e.g. 100 or 0.5)"
        )),
    }
}
