//! `nettool setup [LABFILE]`: bring a Docker-style lab up (or print its plan).

use anyhow::Context;
use clap::Args;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::lab::apply::{self, LabError};
use crate::lab::health::{self, Phase};
use crate::lab::plan::{self, Options, ProxyMode, Step};
use crate::lab::spec::{self, Backend};
use crate::lab::state::{self, LabState};
use crate::output::{paint, print_json, Table};
use crate::program::{me, shell_quote};

/// Examples and notes for `nettool setup --help`.
pub(crate) const SETUP_HELP: &str =
    "LABFILE is a TOML lab file (see docs/setup.md and docs/labs/); without it the\n\
built-in default lab comes up: network 'bridge' 172.19.0.0/16 with 'web' (172.19.0.2,\n\
HTTP on 80, published on host port 8080) and network 'backend' where 'app' and\n\
'client' find each other by name through the embedded DNS.\n\n\
Examples:\n  sudo nettool setup\n  sudo nettool setup docs/labs/two-networks.toml --name demo\n\
  nettool setup --dry-run                       # print every step and the exact iptables text\n\
  sudo nettool setup --isolated --name t1 --json    # inside a fresh host namespace 't1'\n\
  sudo nettool setup --backend nftables --no-userland-proxy";

/// Firewall backend choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendArg {
    /// iptables-restore --noflush, Docker's classic chains (NETTOOL, NETTOOL-USER, ...).
    Iptables,
    /// nft -f, one table per lab.
    Nftables,
}

/// Arguments of `setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// The lab file (TOML). Default: the built-in lab.
    pub labfile: Option<std::path::PathBuf>,
    /// Build the lab's "host" inside a fresh named namespace (NAME) instead of this one.
    #[arg(long)]
    pub isolated: bool,
    /// Lab name (default: the file's [lab] name, or "nettool"). Namespaces are NAME-CONTAINER.
    #[arg(long)]
    pub name: Option<String>,
    /// Firewall backend (default: the file's, else iptables).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// No userland proxy: localhost reaches published ports by DNAT + route_localnet (Docker's hairpin mode).
    #[arg(long)]
    pub no_userland_proxy: bool,
    /// One proxy process per published port with docker-proxy's flags, as dockerd starts them.
    #[arg(long, conflicts_with = "no_userland_proxy")]
    pub docker_style_proxies: bool,
    /// Print the plan (every step, the exact firewall text) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the lab state (or, with --dry-run, the plan) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// True when this build has the `nettool proxy` command the userland-proxy mode starts.
pub(crate) fn proxy_available() -> bool {
    Cli::command().find_subcommand("proxy").is_some()
}

/// Run `setup`.
pub(crate) fn run(a: SetupArgs) -> anyhow::Result<i32> {
    let spec = match &a.labfile {
        Some(p) => spec::load(p),
        None => spec::default_lab(),
    };
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nettool: {e}");
            return Ok(2);
        }
    };
    if let Some(n) = &a.name {
        if !spec::valid_name(n) {
            eprintln!("nettool: --name '{n}': use 1-48 letters, digits, '-', '_', '.' starting with a letter or digit");
            return Ok(2);
        }
    }
    let proxy = if a.no_userland_proxy {
        ProxyMode::Off
    } else if a.docker_style_proxies {
        ProxyMode::DockerStyle
    } else if spec.userland_proxy == Some(false) {
        ProxyMode::Off
    } else {
        ProxyMode::Single
    };
    let has_ports = spec.containers.iter().any(|c| !c.ports.is_empty());
    if proxy != ProxyMode::Off && has_ports && !proxy_available() && !a.dry_run {
        eprintln!(
            "nettool: the userland proxy (`nettool proxy`) is not part of this build yet, so published ports\n\
             cannot be served to localhost the way dockerd's docker-proxy does. Use --no-userland-proxy\n\
             (Docker's hairpin mode: DNAT from OUTPUT plus route_localnet) or set userland_proxy = false in [lab]."
        );
        return Ok(2);
    }
    let backend = a
        .backend
        .map(|b| match b {
            BackendArg::Iptables => Backend::Iptables,
            BackendArg::Nftables => Backend::Nftables,
        })
        .or(spec.backend)
        .unwrap_or(Backend::Iptables);
    let opts = Options {
        name: a.name.clone(),
        isolated: a.isolated,
        backend: Some(backend),
        proxy,
    };
    if a.dry_run {
        let base = backend == Backend::Iptables
            && nix::unistd::geteuid().is_root()
            && apply::find_tool("iptables-save").is_some()
            && apply::base_chains_exist(a.isolated);
        let p = plan::plan(&spec, &opts, base);
        if a.json {
            print_json(&p)?;
        } else {
            print!("{}", render_plan(&p));
        }
        return Ok(0);
    }
    apply::preflight(backend)?;
    let lab_name = a.name.clone().unwrap_or_else(|| spec.name.clone());
    if let Some(code) = existing_lab(&a, &lab_name, backend, proxy)? {
        return Ok(code);
    }
    if let Some(why) = apply::invisible_mounts() {
        eprintln!(
            "nettool: refusing to set up lab {lab_name}: {why}.\nRun it in the machine's mount namespace, entering only the network namespace: {}",
            in_machine_mounts()
        );
        return Ok(2);
    }
    // From here a Ctrl-C or SIGTERM rolls back instead of leaving half a lab.
    apply::catch_interrupts();
    if let Some(rep) = apply::recover_interrupted(&lab_name)? {
        eprintln!(
            "nettool: an earlier setup of lab {lab_name} was interrupted; removed what it left: {} namespaces, {} links, {} processes, {} firewall rule sets, {} sysctls restored",
            rep.namespaces.len(),
            rep.links.len(),
            rep.processes.len(),
            rep.firewall,
            rep.sysctls.len()
        );
        for w in &rep.warnings {
            eprintln!("warning: {w}");
        }
    }
    // Rules and routes of SIGKILLed transparent proxies (this lab's or any): said on stderr, so
    // --json's document stays the lab's state.
    let (removed, warnings) = apply::remove_dead_proxy_leftovers();
    for r in &removed {
        eprintln!("nettool: {}", super::teardown::removed_leftovers(r));
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let base = backend == Backend::Iptables && apply::base_chains_exist(a.isolated);
    let p = plan::plan(&spec, &opts, base);
    match apply::setup(&p) {
        Ok(st) => {
            if a.json {
                print_json(&st)?;
            } else {
                print!("{}", render_up(&st, false));
            }
            Ok(0)
        }
        Err(LabError::AlreadyUp(name)) => {
            let st = state::load(&name).with_context(|| format!("lab {name}"))?;
            if a.json {
                print_json(&st)?;
            } else {
                print!("{}", render_up(&st, true));
            }
            Ok(0)
        }
        Err(e @ LabError::Interrupted { signo, .. }) => {
            eprintln!("nettool: {e}");
            Ok(128 + signo)
        }
        Err(e) => Err(e.into()),
    }
}

/// This command line again, with the binary as [`me`](crate::program::me) says (arguments quoted for a shell).
fn this_command() -> String {
    let mut v = vec![me()];
    v.extend(std::env::args().skip(1).map(|a| shell_quote(&a)));
    v.join(" ")
}

/// The command that runs this setup with only the network namespace entered, the mounts
/// being the machine's.
fn in_machine_mounts() -> String {
    let named = crate::netns::NetNs::current()
        .ok()
        .and_then(|n| health::netns_name_of(n.id().inode))
        .map(|n| crate::netns::named::path_of(&n).display().to_string());
    match named {
        Some(path) => format!("nsenter --net={path} {}", this_command()),
        None => format!(
            "nsenter --mount=/proc/1/ns/mnt --net=/proc/<PID>/ns/net {} (PID: any process in this network namespace)",
            this_command()
        ),
    }
}

/// A lab of this name exists: say how it is and stop (Some(exit code)), or go on (None:
/// it is half built, and setup removes the remains first).
fn existing_lab(
    a: &SetupArgs,
    name: &str,
    backend: Backend,
    proxy: ProxyMode,
) -> anyhow::Result<Option<i32>> {
    let Some(h) = health::check(name) else {
        return Ok(None);
    };
    if h.phase != Phase::Up {
        return Ok(None);
    }
    let st = state::load(name).with_context(|| format!("lab {name}"))?;
    let rebuild = format!("{} teardown {name} && {}", me(), this_command());
    if st.host_netns.is_none() && !h.host_is_here {
        eprintln!(
            "nettool: lab {name} is up, but its host is another network namespace ({}), not this one.\nSee it with `{} labs`; build one here under another name: {} --name {name}-2",
            crate::cmd::labs::host_label(&h),
            me(),
            this_command_without_name()
        );
        return Ok(Some(1));
    }
    // Flags that contradict the running lab: it is not rebuilt behind the user's back.
    let mut differ = Vec::new();
    if a.backend.is_some() && backend != st.backend {
        differ.push(format!(
            "--backend {backend} (the lab runs with {})",
            st.backend
        ));
    }
    if (a.no_userland_proxy || a.docker_style_proxies) && proxy.as_str() != st.userland_proxy {
        let flag = if a.no_userland_proxy {
            "--no-userland-proxy"
        } else {
            "--docker-style-proxies"
        };
        differ.push(format!(
            "{flag} (the lab's userland proxy is {})",
            st.userland_proxy
        ));
    }
    if a.isolated && st.host_netns.is_none() {
        differ.push("--isolated (the lab uses this namespace as its host)".into());
    }
    if !differ.is_empty() {
        eprintln!(
            "nettool: lab {name} is already up, and {} would need a new lab.\nRebuild it that way: {rebuild}\nOr see it as it is: {} labs",
            differ.join(", "),
            me()
        );
        return Ok(Some(2));
    }
    if !h.problems.is_empty() {
        eprintln!(
            "nettool: lab {name} is up but broken: {}.\nRebuild it: {rebuild}",
            h.problems.join("; ")
        );
        return Ok(Some(1));
    }
    if a.json {
        print_json(&st)?;
    } else {
        print!("{}", render_up(&st, true));
    }
    Ok(Some(0))
}

/// This command line without its --name option (to append another).
fn this_command_without_name() -> String {
    let mut v = vec![me()];
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--name" {
            skip = true;
            continue;
        }
        if a.starts_with("--name=") {
            continue;
        }
        v.push(shell_quote(&a));
    }
    v.join(" ")
}

/// The plan as numbered steps, the way --dry-run prints it.
pub(crate) fn render_plan(p: &plan::Plan) -> String {
    let mut s = format!(
        "# lab {} from {} ({} steps; nothing is changed by --dry-run)\n",
        p.name,
        p.spec.source,
        p.steps.len()
    );
    for (i, step) in p.steps.iter().enumerate() {
        let text = step.describe(&p.state.host_netns);
        s.push_str(&format!("step-{}: {}\n", i + 1, text));
        if let Step::Firewall { .. } = step {
            s.push('\n');
        }
    }
    s
}

fn render_up(st: &LabState, already: bool) -> String {
    let mut s = String::new();
    let host = match &st.host_netns {
        Some(h) => format!("host namespace {h}"),
        None => "this namespace as host".into(),
    };
    let head = if already {
        format!("lab {} is already up ({host})", st.name)
    } else {
        format!("lab {} is up ({host})", st.name)
    };
    s.push_str(&format!(
        "{}, firewall {}, userland proxy {}\n\n",
        paint(&head, "1"),
        st.backend,
        st.userland_proxy
    ));
    let mut t = Table::new(&["NETWORK", "BRIDGE", "SUBNET", "GATEWAY", "DNS"]);
    for n in &st.networks {
        let mut subnet = n.subnet.to_string();
        if let Some(v6) = n.ipv6 {
            subnet.push_str(&format!(" {v6}"));
        }
        t.row(vec![
            n.name.clone(),
            n.bridge.clone(),
            subnet,
            n.gateway.to_string(),
            if n.dns {
                "127.0.0.11".into()
            } else {
                "-".into()
            },
        ]);
    }
    s.push_str(&t.render());
    s.push('\n');
    let mut t = Table::new(&[
        "CONTAINER",
        "NETNS",
        "MODE",
        "IFACE",
        "ADDRESS",
        "HOST VETH",
        "RUN",
    ]);
    for c in &st.containers {
        let netns = c.netns.clone().unwrap_or_else(|| "(host)".into());
        let run = c.run.clone().unwrap_or_else(|| "-".into());
        if c.networks.is_empty() {
            t.row(vec![
                c.name.clone(),
                netns,
                c.mode.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                run,
            ]);
            continue;
        }
        for (k, i) in c.networks.iter().enumerate() {
            let mut addr = i.address.to_string();
            if let Some(v6) = i.address6 {
                addr.push_str(&format!(" {v6}"));
            }
            let first = k == 0;
            t.row(vec![
                if first { c.name.clone() } else { String::new() },
                if first { netns.clone() } else { String::new() },
                if first { c.mode.clone() } else { String::new() },
                i.interface.clone(),
                addr,
                i.host_veth.clone(),
                if first { run.clone() } else { String::new() },
            ]);
        }
    }
    s.push_str(&t.render());
    if !st.ports.is_empty() {
        s.push('\n');
        let mut t = Table::new(&["PUBLISHED", "CONTAINER", "TARGET"]);
        for p in &st.ports {
            t.row(vec![
                format!("{}:{}/{}", p.host_ip, p.host_port, p.proto),
                p.container.clone(),
                format!("{}:{}", p.container_ip, p.container_port),
            ]);
        }
        s.push_str(&t.render());
    }
    s.push_str(&format!(
        "\nState, journal and logs: {}\n\nTry next:\n",
        st.state_dir
    ));
    let lines = try_next(st);
    // One column for the comments, however long the binary's path makes the commands.
    let width = lines
        .iter()
        .filter(|(_, why)| !why.is_empty())
        .map(|(cmd, _)| cmd.len() + 2)
        .max()
        .unwrap_or(0)
        .max(62);
    for (cmd, why) in lines {
        s.push_str(&format!("  {cmd}"));
        if !why.is_empty() {
            let pad = width - cmd.len();
            s.push_str(&format!("{}# {why}", " ".repeat(pad)));
        }
        s.push('\n');
    }
    s
}

/// Commands worth running against this lab next: (command, why).
fn try_next(st: &LabState) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let exec = |ns: &Option<String>| match ns {
        Some(h) => format!("ip netns exec {h} "),
        None => String::new(),
    };
    let hx = exec(&st.host_netns);
    // As the shell will find it: `cargo run --release` leaves nettool off the PATH.
    let nt = me();
    if let Some(p) = st.ports.first() {
        let target = if p.host_ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            p.host_ip.to_string()
        };
        if p.proto == spec::Proto::Tcp {
            v.push((
                format!("{hx}curl -s http://{target}:{}/", p.host_port),
                format!("{} through the published port", p.container),
            ));
        }
        v.push((
            format!("{hx}{nt} explain-nat"),
            "the DNAT/MASQUERADE rules in plain words".into(),
        ));
        v.push((
            format!("{hx}{nt} doctor {}", p.host_port),
            format!(
                "every hop from host port {} to {}",
                p.host_port, p.container
            ),
        ));
        v.push((
            format!(
                "{hx}{nt} proxy --dump 9{:03} {}:{}",
                p.host_port % 1000,
                p.container_ip,
                p.container_port
            ),
            "watch the traffic through a tracing proxy".into(),
        ));
    }
    // A pair of containers on one DNS network, to show name resolution.
    let dns_pair = st.networks.iter().filter(|n| n.dns).find_map(|n| {
        let on: Vec<_> = st
            .containers
            .iter()
            .filter(|c| c.networks.iter().any(|i| i.network == n.name))
            .collect();
        (on.len() >= 2).then(|| (on[on.len() - 1].clone(), on[0].clone()))
    });
    if let Some((from, to)) = dns_pair {
        let fx = exec(&from.netns);
        v.push((
            format!("{fx}dig +short @127.0.0.11 {}", to.name),
            format!("{} asks the embedded DNS for {}", from.name, to.name),
        ));
        if to.run.as_deref().is_some_and(|r| r.contains("serve http")) {
            v.push((format!("{fx}curl -s http://{}/", to.name), "by name".into()));
        }
        if let Some(ns) = &from.netns {
            v.push((
                format!("{nt} dns --netns {ns}"),
                "DNS queries and answers as they happen".into(),
            ));
        }
    }
    if let Some(c) = st.containers.iter().find(|c| !c.networks.is_empty()) {
        let n = match &st.host_netns {
            Some(h) => format!(" --netns {h}"),
            None => String::new(),
        };
        v.push((
            format!("{nt} peer {}{n}", c.networks[0].host_veth),
            format!("the container behind this veth ({})", c.name),
        ));
        if let Some(ns) = &c.netns {
            v.push((
                format!("{nt} netns inspect {ns}"),
                "addresses, routes, sockets inside".into(),
            ));
        }
    }
    v.push((
        format!("{hx}{nt} topology"),
        "the whole lab as a picture".into(),
    ));
    v.push((format!("{nt} teardown {}", st.name), String::new()));
    v
}
