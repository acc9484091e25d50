//! `nettool netns list|inspect|exec`.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::engine::Intent;
use crate::facts::links::{LinkMap, LinkRef};
use crate::facts::{self, Parts, ReadOptions};
use crate::netns::discover::{ContainerRef, NamespaceInfo};
use crate::netns::exec::{self, ExecOptions};
use crate::netns::links::LinkSnapshot;
use crate::netns::peers::VethPeer;
use crate::netns::sockets::Socket;
use crate::netns::sysctl::{self, Sysctl};
use crate::netns::{NetNs, NsId};
use crate::output::{paint, print_json, Table};

/// Run one `netns` subcommand.
pub(crate) fn run(cmd: NetnsCommand) -> anyhow::Result<i32> {
    match cmd {
        NetnsCommand::List(a) => list(a),
        NetnsCommand::Inspect(a) => inspect(a),
        NetnsCommand::Exec(a) => exec_cmd(a),
    }
}

fn list(a: NetnsListArgs) -> anyhow::Result<i32> {
    // One read: discovery, and each namespace entered once to count its links.
    let snap = facts::read_with(
        &ReadOptions::host(NetNs::current().context("opening the current namespace")?),
        if a.no_interfaces {
            &Parts::NONE
        } else {
            &Parts::NAMESPACES
        },
        Some(Intent::read()),
    )?;
    let all: Vec<NamespaceInfo> = snap.namespaces.iter().map(|n| n.info()).collect();
    if a.json {
        print_json(&all)?;
        return Ok(0);
    }
    let mut t = Table::new(&["INODE", "NAMES", "NSID", "IFACES", "CONTAINER", "PROCESSES"]);
    for n in &all {
        let mut names = n.names.clone();
        names.extend(n.mounts.iter().map(|m| m.display().to_string()));
        if n.current {
            names.insert(0, "(current)".into());
        }
        let procs = match n.processes.len() {
            0 => "-".to_string(),
            1..=3 => n
                .processes
                .iter()
                .map(|p| format!("{}/{}", p.pid, p.comm))
                .collect::<Vec<_>>()
                .join(","),
            k => format!(
                "{} +{} more",
                n.processes
                    .iter()
                    .take(2)
                    .map(|p| format!("{}/{}", p.pid, p.comm))
                    .collect::<Vec<_>>()
                    .join(","),
                k - 2
            ),
        };
        let container = containers_cell(&n.containers, false);
        t.row(vec![
            n.id.inode.to_string(),
            if names.is_empty() {
                "-".into()
            } else {
                names.join(",")
            },
            n.nsid.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            n.interfaces
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into()),
            if container.is_empty() {
                "-".into()
            } else {
                container
            },
            procs,
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}

/// The containers of a namespace in one line. Terse (netns list): names with their engine, a
/// pod's members and infra with the pod's name ("web,4f2a-infra (podman pod shop)"). With ids
/// (peer): "web (06434c0ce942), sidecar (24d41e2c12cc)", "... in pod shop" for a pod. A container
/// known only from a cgroup shows its short id.
pub(crate) fn containers_cell(cs: &[ContainerRef], with_ids: bool) -> String {
    if with_ids {
        let mut out = cs
            .iter()
            .map(|c| {
                let short: String = c.id.chars().take(12).collect();
                match &c.name {
                    Some(n) => format!("{n} ({short})"),
                    None => short,
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(pod) = cs.iter().find_map(|c| c.pod.as_ref()) {
            out.push_str(&format!(" in pod {pod}"));
        }
        return out;
    }
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for c in cs {
        let tag = match (&c.pod, c.engine) {
            (Some(pod), Some(e)) => format!("{e} pod {pod}"),
            (Some(pod), None) => format!("pod {pod}"),
            (None, Some(e)) => e.to_string(),
            (None, None) => String::new(),
        };
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, names)) => names.push(c.short_name()),
            None => groups.push((tag, vec![c.short_name()])),
        }
    }
    groups
        .into_iter()
        .map(|(tag, names)| match tag.is_empty() {
            true => names.join(","),
            false => format!("{} ({tag})", names.join(",")),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything `netns inspect` reports about one namespace.
#[derive(Debug, Serialize)]
pub(crate) struct Inspection {
    /// The label the namespace was opened as.
    pub target: String,
    /// Its identity.
    pub id: NsId,
    /// Its names under /run/netns (and /run/docker/netns, prefixed "docker/").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The containers (with their engine) whose namespace this is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) containers: Vec<ContainerRef>,
    /// Links, addresses (IPv4 and IPv6), main-table routes of both families.
    #[serde(flatten)]
    pub links: LinkSnapshot,
    /// Veth peers resolved to the other namespace.
    pub veth_peers: Vec<VethPeer>,
    /// Listening (or all) sockets with owners.
    pub sockets: Vec<Socket>,
    /// Sysctls that matter for container networking, the per-interface ones included.
    pub sysctls: Vec<Sysctl>,
}

fn inspect(a: NetnsInspectArgs) -> anyhow::Result<i32> {
    // The engines are read once: for container:NAME and for naming the peers' namespaces.
    let intent = Intent::read();
    let ns = NetNs::open_with(&a.target, Some(&intent))?;
    let snap = facts::read_with(
        &ReadOptions::host(ns.clone()),
        &Parts {
            connections: a.all_sockets,
            ..Parts::ONE_NAMESPACE
        },
        Some(intent),
    )
    .with_context(|| format!("reading namespace {}", ns.label()))?;
    let report = inspection(&snap, ns.label());
    if a.json {
        print_json(&report)?;
    } else {
        print!("{}", render_inspection(&report));
    }
    Ok(0)
}

/// What `netns inspect` shows of the snapshot's host namespace (the one inspected).
fn inspection(snap: &facts::Snapshot, target: &str) -> Inspection {
    let map = LinkMap::new(snap);
    let host = snap.host();
    let me = map.ns_index(snap.host).unwrap_or_default();
    let veth_peers = host
        .links
        .iter()
        .filter(|l| l.kind == "veth")
        .filter_map(|l| {
            let peer_index = l.link?;
            let there = map.link_target(LinkRef {
                ns: me,
                index: l.index,
            });
            let peer_ns = there.and_then(|t| snap.namespaces.get(t.ns));
            Some(VethPeer {
                local_index: l.index,
                local_name: l.name.clone(),
                peer_index,
                peer_name: there.and_then(|t| map.link(t)).map(|p| p.name.clone()),
                peer_ns: peer_ns.map(|n| n.id),
                peer_ns_label: peer_ns.map(|n| n.info().display_name()),
                link_netnsid: l.link_netnsid,
            })
        })
        .collect();
    let mut sockets: Vec<Socket> = host
        .listeners
        .iter()
        .chain(&host.connections)
        .cloned()
        .collect();
    sockets.sort_by(|a, b| {
        (a.proto, a.local.port(), a.local.ip()).cmp(&(b.proto, b.local.port(), b.local.ip()))
    });
    // The machine-wide ones in their usual order, then those of each interface.
    let known = |n: &str| sysctl::INTERESTING.iter().position(|k| *k == n);
    let mut sysctls: Vec<Sysctl> = host
        .sysctls
        .iter()
        .map(|(name, value)| Sysctl {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    sysctls.sort_by_key(|s| known(&s.name).unwrap_or(usize::MAX));
    Inspection {
        target: target.to_string(),
        id: host.id,
        names: host.names.clone(),
        containers: host.containers.clone(),
        links: LinkSnapshot {
            links: host.links.clone(),
            addresses: host.addresses.clone(),
            routes: host.routes.clone(),
        },
        veth_peers,
        sockets,
        sysctls,
    }
}

/// Render an inspection as text: interfaces, routes, sockets, sysctls.
pub(crate) fn render_inspection(r: &Inspection) -> String {
    let mut out = format!(
        "{} {} (inode {})\n",
        paint("namespace", "1"),
        r.target,
        r.id.inode
    );
    if !r.containers.is_empty() {
        out.push_str(&format!(
            "{} {}\n",
            paint("containers", "1"),
            containers_cell(&r.containers, false)
        ));
    }
    out.push('\n');
    out.push_str(&paint("interfaces\n", "1"));
    let mut t = Table::new(&[
        "IDX",
        "NAME",
        "KIND",
        "STATE",
        "MTU",
        "MAC",
        "ADDRESSES",
        "PEER / MASTER",
    ]);
    for l in &r.links.links {
        let addrs: Vec<String> = r
            .links
            .addresses
            .iter()
            .filter(|a| a.index == l.index)
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect();
        let mut extra = Vec::new();
        if let Some(p) = r.veth_peers.iter().find(|p| p.local_index == l.index) {
            let name = p
                .peer_name
                .clone()
                .unwrap_or_else(|| format!("if{}", p.peer_index));
            match &p.peer_ns_label {
                Some(ns) if p.link_netnsid.is_some() => {
                    extra.push(format!("peer {name}@if{} in {ns}", p.peer_index))
                }
                Some(_) => extra.push(format!("peer {name}@if{} (same namespace)", p.peer_index)),
                None => extra.push(format!(
                    "peer if{} in nsid {}",
                    p.peer_index,
                    p.link_netnsid.unwrap_or(-1)
                )),
            }
        }
        if let Some(m) = l.master {
            let mname = r
                .links
                .links
                .iter()
                .find(|x| x.index == m)
                .map(|x| x.name.clone())
                .unwrap_or_else(|| m.to_string());
            extra.push(format!("master {mname}"));
        }
        let state = if l.admin_up {
            l.oper_state.to_uppercase()
        } else {
            "DOWN".into()
        };
        t.row(vec![
            l.index.to_string(),
            l.name.clone(),
            l.kind.clone(),
            state,
            l.mtu.to_string(),
            l.mac.clone().unwrap_or_else(|| "-".into()),
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(" ")
            },
            extra.join(", "),
        ]);
    }
    out.push_str(&t.render());

    out.push_str(&paint("\nroutes\n", "1"));
    let name_of = |i: Option<u32>| {
        i.and_then(|i| r.links.links.iter().find(|l| l.index == i))
            .map(|l| l.name.clone())
            .unwrap_or_default()
    };
    if r.links.routes.is_empty() {
        out.push_str("(none)\n");
    }
    for rt in &r.links.routes {
        let dest = match rt.destination {
            Some(d) => format!("{d}/{}", rt.prefix_len),
            None => "default".into(),
        };
        let mut line = dest;
        if let Some(g) = rt.gateway {
            line.push_str(&format!(" via {g}"));
        }
        if rt.oif.is_some() {
            line.push_str(&format!(" dev {}", name_of(rt.oif)));
        }
        if let Some(s) = rt.prefsrc {
            line.push_str(&format!(" src {s}"));
        }
        if let Some(m) = rt.metric {
            line.push_str(&format!(" metric {m}"));
        }
        out.push_str(&line);
        out.push('\n');
    }

    out.push_str(&paint("\nsockets\n", "1"));
    let mut t = Table::new(&["PROTO", "STATE", "LOCAL", "REMOTE", "PROCESS"]);
    for s in &r.sockets {
        let procs = s
            .owners
            .iter()
            .map(|o| format!("{}/{}", o.pid, o.comm))
            .collect::<Vec<_>>()
            .join(",");
        t.row(vec![
            s.proto.to_string(),
            s.state.clone(),
            s.local.to_string(),
            if s.remote.port() == 0 {
                "*".into()
            } else {
                s.remote.to_string()
            },
            if procs.is_empty() { "-".into() } else { procs },
        ]);
    }
    if t.is_empty() {
        out.push_str("(no listening sockets)\n");
    } else {
        out.push_str(&t.render());
    }

    out.push_str(&paint("\nsysctls\n", "1"));
    for s in &r.sysctls {
        out.push_str(&format!("{} = {}\n", s.name, s.value));
    }
    out
}

fn exec_cmd(a: NetnsExecArgs) -> anyhow::Result<i32> {
    let ns = NetNs::open(&a.target)?;
    // /etc/netns/NAME applies to named namespaces, with or without --sys, as with `ip netns
    // exec`: a lab's containers find each other by name through its resolv.conf there.
    let etc_netns = ns
        .path()
        .strip_prefix(crate::netns::NETNS_RUN_DIR)
        .ok()
        .map(|p| p.display().to_string());
    let opts = ExecOptions {
        remount_sys: a.remount_sys,
        etc_netns,
    };
    Ok(exec::run(&ns, &a.command, &opts)?)
}

/// `nettool netns ...`
#[derive(Debug, Subcommand)]
pub(crate) enum NetnsCommand {
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
pub(crate) struct NetnsListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Do not enter each namespace to count its interfaces (faster).
    #[arg(long)]
    pub no_interfaces: bool,
}

/// Arguments of `netns inspect`.
#[derive(Debug, Args)]
pub(crate) struct NetnsInspectArgs {
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
pub(crate) struct NetnsExecArgs {
    /// The namespace: NAME, PATH, pid:N, container:NAME.
    pub target: String,
    /// Also give the command its own /sys, like `ip netns exec` (/etc/netns/NAME files apply
    /// either way).
    #[arg(long = "sys")]
    pub remount_sys: bool,
    /// The command and its arguments (`--` before them is optional, as with `ip netns exec`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}
