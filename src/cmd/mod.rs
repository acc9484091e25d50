//! One module per command: turn parsed arguments into core calls and render the result.

pub(crate) mod capture;
pub(crate) mod dns;
pub(crate) mod doctor;
pub(crate) mod explain_nat;
pub(crate) mod lab_daemon;
pub(crate) mod labs;
pub(crate) mod netns;
pub(crate) mod peer;
pub(crate) mod proxy;
pub(crate) mod serve;
pub(crate) mod setup;
pub(crate) mod teardown;
pub(crate) mod topology;
pub(crate) mod trace;

use crate::cli::{Cli, Command};

/// Why a command cannot do its job without privileges, when it cannot; None when it can (a
/// shell completion, rules or a capture read from files, a recorded snapshot, the proxy and
/// the built-in servers, which need none in the current namespace). `{me}` stands for the
/// program as the user can run it ([`crate::program::me`]).
fn privileges_needed(cmd: &Command) -> Option<&'static str> {
    const ENTER: &str = "it enters network namespaces (CAP_SYS_ADMIN) and reads every process's namespace (CAP_SYS_PTRACE)";
    match cmd {
        Command::Completions(_) | Command::Proxy(_) | Command::Serve(_) | Command::LabDaemon(_) => {
            None
        }
        // setup and teardown say it themselves, with what they were about to change.
        Command::Setup(_) | Command::Teardown(_) => None,
        Command::ExplainNat(a) if !a.files.is_empty() && a.netns.is_none() => None,
        Command::ExplainNat(_) => Some("it reads the live firewall rules inside a network namespace (CAP_SYS_ADMIN, CAP_NET_ADMIN); without root, explain a saved rule set: `{me} explain-nat -f FILE` (iptables-save or `nft -j list ruleset` output)"),
        Command::Dns(a) if a.read.is_some() => None,
        Command::Dns(_) => Some("it captures packets inside network namespaces (CAP_NET_RAW, CAP_SYS_ADMIN); without root, explain a capture made elsewhere with `{me} dns --read FILE`"),
        Command::Capture(a) if a.read.is_some() => None,
        Command::Capture(_) => Some("it captures packets inside network namespaces (CAP_NET_RAW, CAP_SYS_ADMIN); without root, print a capture made elsewhere with `{me} capture --read FILE`"),
        Command::Doctor(a) if a.snapshot.is_some() => None,
        Command::Doctor(_) => Some("it reads links, sockets and firewall rules inside network namespaces (CAP_SYS_ADMIN, CAP_NET_ADMIN); without root, replay a recorded state with `{me} doctor --snapshot FILE`"),
        Command::Trace(_) => Some("it adds trace rules and reads kernel events (CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
        Command::Topology(a) if a.snapshot.is_some() => None,
        Command::Topology(_) => Some("it enters network namespaces (CAP_SYS_ADMIN) and reads every process's namespace (CAP_SYS_PTRACE); without root, draw a recorded state with `{me} topology --snapshot FILE` (recorded by `doctor --save-snapshot FILE`)"),
        Command::Netns(_) | Command::Peer(_) | Command::Labs(_) => Some(ENTER),
        #[allow(unreachable_patterns)]
        _ => Some(ENTER),
    }
}

/// The command's name as typed (`netns list`, `explain-nat`).
fn command_name(cmd: &Command) -> String {
    use clap::CommandFactory;
    let argv: Vec<String> = std::env::args().collect();
    // The first argument that is a subcommand of nettool, with its own subcommand if it has one.
    let top = Cli::command();
    let Some(i) = argv
        .iter()
        .position(|a| top.get_subcommands().any(|c| c.get_name() == a))
    else {
        return format!("{cmd:?}").to_lowercase();
    };
    match (cmd, argv.get(i + 1)) {
        (Command::Netns(_), Some(sub)) => format!("{} {sub}", argv[i]),
        _ => argv[i].clone(),
    }
}

/// Commands whose only job is to print a report (a closed stdout may end them at once).
fn prints_a_report(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Netns(_)
            | Command::Peer(_)
            | Command::ExplainNat(_)
            | Command::Topology(_)
            | Command::Labs(_)
            | Command::Dns(_)
            | Command::Doctor(_)
            | Command::Completions(_)
    )
}

/// True when this process may enter other network namespaces: CAP_SYS_ADMIN in its
/// effective set (root normally has it; a root inside a user namespace or a container may not).
fn privileged() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// "; could not remove: WHY; WHY" for the items of a dead process's journal that are still
/// there, or nothing: the tail of a line that says what was removed.
pub(crate) fn not_removed(r: &crate::trace::journal::Recovered) -> String {
    if r.failed.is_empty() {
        return String::new();
    }
    let why: Vec<&str> = r.failed.iter().map(|(_, e)| e.as_str()).collect();
    format!("; could not remove: {}", why.join("; "))
}

/// Run the parsed command line; the returned code is the process exit code.
pub(crate) fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    if let Some(why) = privileges_needed(&cli.command) {
        if !privileged() {
            let name = command_name(&cli.command);
            let me = crate::program::me();
            let why = why.replace("{me}", &me);
            anyhow::bail!("`{me} {name}` needs root: {why}. Run it as root (sudo {me} {name} ...)");
        }
    }
    if prints_a_report(&cli.command) {
        // `nettool ... | head` ends quietly, as other Unix tools do, instead of a panic on the
        // first print after head left (Rust ignores SIGPIPE). Not for the commands that hold
        // state to clean up (proxy, trace, capture, setup) or serve connections.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Netns(c) => netns::run(c),
        Command::Doctor(a) => doctor::run(a),
        Command::Peer(a) => peer::run(a),
        Command::Dns(a) => dns::run(a),
        Command::Capture(a) => capture::run(a),
        Command::Topology(a) => topology::run(a),
        Command::ExplainNat(a) => explain_nat::run(a),
        Command::Setup(a) => setup::run(a),
        Command::Teardown(a) => teardown::run(a),
        Command::Labs(a) => labs::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Trace(a) => trace::run(a),
        Command::LabDaemon(a) => lab_daemon::run(a),
        Command::Proxy(a) => proxy::run(*a, cli.verbose),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "nettool", &mut std::io::stdout());
            Ok(0)
        }
    }
}
