//! The command line: every command's arguments, help text and examples (clap derive).

use clap::{Args, Parser, Subcommand};

use crate::cmd::dns::DnsArgs;
use crate::cmd::doctor::DoctorArgs;
use crate::cmd::explain_nat::ExplainNatArgs;
use crate::cmd::lab_daemon::LabDaemonArgs;
use crate::cmd::labs::LabsArgs;
use crate::cmd::netns::NetnsCommand;
use crate::cmd::peer::PeerArgs;
use crate::cmd::proxy::ProxyArgs;
use crate::cmd::serve::ServeArgs;
use crate::cmd::setup::SetupArgs;
use crate::cmd::teardown::TeardownArgs;
use crate::cmd::topology::TopologyArgs;

/// Debug container networking on Linux: namespaces, veths, NAT, DNS, proxies, labs.
#[derive(Debug, Parser)]
#[command(name = "nettool", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Examples:\n  nettool netns list\n  nettool netns inspect web\n  nettool netns exec pid:1234 -- ss -tlnp\n\nRun as root: entering namespaces needs CAP_SYS_ADMIN."
)]
pub(crate) struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace; RUST_LOG overrides). `proxy` logs at
    /// info by default: there -v adds a line per connection.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List, inspect and enter network namespaces.
    #[command(subcommand)]
    Netns(NetnsCommand),

    /// The other end of a veth (interface, namespace, processes, container), both ways.
    #[command(after_help = crate::cmd::peer::PEER_HELP)]
    Peer(PeerArgs),

    /// Why a published port does (not) reach its container: every hop with evidence, the fix.
    #[command(after_help = crate::cmd::doctor::DOCTOR_HELP)]
    Doctor(DoctorArgs),

    /// Draw the namespaces, bridges, veth pairs and published ports as a picture.
    #[command(after_help = crate::cmd::topology::TOPOLOGY_HELP)]
    Topology(TopologyArgs),

    /// NAT and filter rules in plain words, and a packet walk through them.
    #[command(
        name = "explain-nat",
        after_help = crate::cmd::explain_nat::EXPLAIN_NAT_HELP
    )]
    ExplainNat(ExplainNatArgs),

    /// Forward ports (TCP/UDP, ranges, across namespaces) and show what passes; a docker-proxy drop-in.
    #[command(after_help = crate::cmd::proxy::PROXY_HELP)]
    Proxy(Box<ProxyArgs>),

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  nettool completions bash > /etc/bash_completion.d/nettool"
    )]
    Completions(CompletionsArgs),

    /// Trace DNS queries and answers, paired, with latency, in any namespace (Docker DNS aware).
    #[command(after_help = crate::cmd::dns::DNS_HELP)]
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

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Parse "10s", "500ms", "2m", "1h" or a bare number of seconds ("1.5").
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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
