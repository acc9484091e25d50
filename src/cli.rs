//! The command line: every command's arguments, help text and examples (clap derive).

use clap::{Args, Parser, Subcommand};

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

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  nettool completions bash > /etc/bash_completion.d/nettool"
    )]
    Completions(CompletionsArgs),
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
