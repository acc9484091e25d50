//! `nettool peer`: the other end of a veth, both ways, and every veth pair on the machine.

use anyhow::{bail, Context};
use clap::Args;

use crate::engine::Intent;
use crate::facts::links::{LinkEnd, LinkMap, LinkRef, NsSummary, PeerReport, VethPair};
use crate::facts::{self, Parts, ReadOptions};
use crate::netns::NetNs;
use crate::output::{paint, print_json, Table};

/// Run `nettool peer`.
pub(crate) fn run(a: PeerArgs) -> anyhow::Result<i32> {
    // The engines are read once: for container:NAME and for naming every namespace.
    let intent = if a.no_docker {
        Intent::default()
    } else {
        Intent::read()
    };
    let look = match &a.netns {
        Some(t) => {
            Some(NetNs::open_with(t, Some(&intent)).with_context(|| format!("--netns {t}"))?)
        }
        None => None,
    };
    // One read of the machine: links and addresses of every namespace, every link between
    // namespaces resolved; nothing else (no sockets, sysctls or firewall).
    let snap = facts::read_with(
        &ReadOptions {
            host: NetNs::current().context("opening the current namespace")?,
            extra: look.iter().cloned().collect(),
            skip_docker: a.no_docker,
            conntrack: false,
        },
        &Parts::PEERS,
        Some(intent),
    )?;
    let scan = LinkMap::new(&snap);
    let look_idx = match &look {
        Some(ns) => scan.ns_index(ns.id()),
        None => scan.current,
    };

    if a.all {
        let mut rows = scan.pair_rows();
        if let (Some(_), Some(i)) = (&look, look_idx) {
            let inode = snap.namespaces[i].id.inode;
            rows.retain(|r| {
                r.host.namespace.inode == inode
                    || r.peer.as_ref().map(|p| p.namespace.inode) == Some(inode)
            });
        }
        if a.json {
            print_json(&rows)?;
        } else {
            print_all(&rows);
        }
        return Ok(0);
    }

    let Some(iface) = a.iface.as_deref() else {
        bail!("give an interface, a namespace TARGET, or --all");
    };
    let look_idx = look_idx.context("cannot find the namespace to look the interface up in")?;
    let ns_word = ["container:", "pid:", "name:"]
        .iter()
        .any(|p| iface.starts_with(p))
        || iface.contains('/');

    if !ns_word {
        if let Some(r) = scan.by_name(look_idx, iface) {
            let rep = scan
                .report(r)
                .with_context(|| format!("interface {iface} vanished while reading it"))?;
            if a.json {
                print_json(&rep)?;
            } else {
                print_report(&rep);
            }
            return Ok(0);
        }
    }

    // Not an interface here: a namespace TARGET (reverse lookup), unless --netns said where to look.
    let ns_err = if a.netns.is_none() {
        match NetNs::open_with(iface, snap.intent.as_ref().filter(|_| !a.no_docker)) {
            Ok(ns) => return namespace_reports(&scan, &ns, iface, a.json),
            Err(e) if ns_word => return Err(e).with_context(|| format!("namespace {iface}")),
            Err(e) => Some(e),
        }
    } else {
        None
    };
    Err(unknown_interface(&scan, look_idx, iface, ns_err))
}

/// Reports for every interface (but lo) of a namespace: the reverse lookup.
fn namespace_reports(scan: &LinkMap, ns: &NetNs, target: &str, json: bool) -> anyhow::Result<i32> {
    let idx = match scan.ns_index(ns.id()) {
        Some(i) => i,
        None => bail!(
            "namespace {target} (inode {}) disappeared while scanning; try again",
            ns.id().inode
        ),
    };
    let n = &scan.snap.namespaces[idx];
    if let Some(e) = &n.error {
        bail!("cannot read namespace {target}: {e}");
    }
    let mut links: Vec<_> = n.links.iter().filter(|l| l.kind != "loopback").collect();
    // Veths first: they are what the reverse lookup is for.
    links.sort_by_key(|l| (l.kind != "veth", l.index));
    let reports: Vec<PeerReport> = links
        .iter()
        .filter_map(|l| {
            scan.report(LinkRef {
                ns: idx,
                index: l.index,
            })
        })
        .collect();
    if json {
        print_json(&reports)?;
        return Ok(0);
    }
    if reports.is_empty() {
        println!(
            "namespace {} (inode {}) has no interfaces besides lo",
            target,
            ns.id().inode
        );
        return Ok(0);
    }
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_report(r);
    }
    Ok(0)
}

fn unknown_interface(
    scan: &LinkMap,
    ns: usize,
    iface: &str,
    ns_err: Option<crate::netns::NetnsError>,
) -> anyhow::Error {
    let summary = scan.ns_summary(ns);
    let mut msg = format!(
        "no interface named '{iface}' in namespace {} (inode {})",
        summary.label, summary.inode
    );
    let close = scan.close_names(ns, iface);
    if !close.is_empty() {
        msg.push_str(&format!("; did you mean {}?", close.join(", ")));
    }
    let elsewhere: Vec<String> = scan
        .everywhere_named(iface)
        .into_iter()
        .filter(|r| r.ns != ns)
        .take(5)
        .map(|r| {
            let s = scan.ns_summary(r.ns);
            format!("{} (ifindex {})", target_for(&s), r.index)
        })
        .collect();
    if !elsewhere.is_empty() {
        msg.push_str(&format!(
            "\n'{iface}' exists in: {}; look there with --netns TARGET",
            elsewhere.join(", ")
        ));
    }
    if elsewhere.is_empty() {
        let near: Vec<String> = (0..scan.snap.namespaces.len())
            .filter(|&n| n != ns)
            .flat_map(|n| {
                let label = target_for(&scan.ns_summary(n));
                scan.close_names(n, iface)
                    .into_iter()
                    .map(move |c| format!("{c} in {label}"))
            })
            .take(5)
            .collect();
        if !near.is_empty() {
            msg.push_str(&format!(
                "
close names in other namespaces: {} (look there with --netns TARGET)",
                near.join(", ")
            ));
        }
    }
    if ns_err.is_some() {
        msg.push_str(&format!(
            "\nit is not a namespace either (no /run/netns/{iface}, process or container of that name)"
        ));
    }
    let me = crate::program::me();
    msg.push_str(&format!(
        "\nlist interfaces with `{me} netns inspect TARGET` or `{me} peer --all`"
    ));
    anyhow::anyhow!(msg)
}

/// A TARGET string that opens this namespace again.
fn target_for(s: &NsSummary) -> String {
    if s.current {
        return "current".into();
    }
    // An engine's container by name (a Podman sandbox's netns-UUID name says nothing).
    if let Some(c) = s.containers.iter().find(|c| {
        c.engine
            .is_some_and(|e| e != crate::engine::EngineKind::Lab)
    }) {
        return format!("container:{}", c.short_name());
    }
    if let Some(n) = s.names.iter().find(|n| !n.starts_with("docker/")) {
        return n.clone();
    }
    if let Some(c) = s.containers.first() {
        return format!(
            "container:{}",
            c.name
                .clone()
                .unwrap_or_else(|| c.id.chars().take(12).collect())
        );
    }
    if let Some(p) = s.processes.first() {
        return format!("pid:{}", p.pid);
    }
    s.path.display().to_string()
}

fn headline(e: &LinkEnd) -> String {
    let state = if e.admin_up {
        e.state.clone()
    } else {
        "down".to_string()
    };
    format!(
        "{} (ifindex {}, {}, {}, mtu {})",
        paint(&e.name, "1"),
        e.index,
        e.kind,
        state,
        e.mtu
    )
}

fn processes(s: &NsSummary) -> String {
    if s.processes.is_empty() {
        return "- (none: kept alive by a name or mount)".into();
    }
    let mut p: Vec<String> = s
        .processes
        .iter()
        .take(6)
        .map(|o| format!("{}/{}", o.pid, o.comm))
        .collect();
    if s.processes.len() > 6 {
        p.push(format!("+{} more", s.processes.len() - 6));
    }
    p.join(", ")
}

fn containers(s: &NsSummary) -> String {
    crate::cmd::netns::containers_cell(&s.containers, true)
}

fn ns_line(s: &NsSummary) -> String {
    let mut parts = vec![format!("inode {}", s.inode)];
    if let Some(id) = s.nsid {
        parts.push(format!("nsid {id}"));
    }
    parts.push(s.path.display().to_string());
    format!("{} ({})", s.label, parts.join(", "))
}

fn print_end(e: &LinkEnd, show_ns: bool) {
    let kv = |k: &str, v: String| println!("  {:<11}{}", k, v);
    if show_ns {
        kv("namespace", ns_line(&e.namespace));
        if !e.namespace.names.is_empty() {
            kv("names", e.namespace.names.join(", "));
        }
        for m in &e.namespace.mounts {
            kv("mounted at", m.display().to_string());
        }
        kv("processes", processes(&e.namespace));
        let c = containers(&e.namespace);
        if !c.is_empty() {
            kv("container", c);
        }
    }
    if let Some(m) = &e.master {
        kv(e.master_kind.as_deref().unwrap_or("master"), m.to_string());
    }
    kv(
        "addresses",
        if e.addresses.is_empty() {
            "-".into()
        } else {
            e.addresses.join(", ")
        },
    );
    if let Some(mac) = &e.mac {
        kv("mac", mac.clone());
    }
}

fn print_report(r: &PeerReport) {
    let i = &r.interface;
    println!("{} in {}", headline(i), ns_line(&i.namespace));
    print_end(i, false);
    match r.kind.as_str() {
        "veth" => match &r.peer {
            Some(p) => {
                let side = if p.namespace.inode == i.namespace.inode {
                    "same namespace".to_string()
                } else {
                    match i.link_netnsid {
                        Some(id) => format!("nsid {id} as seen from {}", i.namespace.label),
                        None => "another namespace".into(),
                    }
                };
                println!("peer {} [{side}]", headline(p));
                print_end(p, true);
            }
            None => println!(
                "peer {}",
                r.peer_unresolved.as_deref().unwrap_or("not found")
            ),
        },
        kind => {
            println!("  {:<11}{kind} (not a veth, so it has no peer)", "kind");
            if let Some(p) = &r.parent {
                let where_ = if p.namespace.inode == i.namespace.inode {
                    String::new()
                } else {
                    format!(" in {}", ns_line(&p.namespace))
                };
                println!(
                    "  {:<11}{} (ifindex {}, {}){where_}",
                    "parent", p.name, p.index, p.kind
                );
            }
            if kind == "bridge" {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|p| format!("{}@{}", p.name, p.index))
                    .collect();
                println!(
                    "  {:<11}{}",
                    "ports",
                    if ports.is_empty() {
                        "-".into()
                    } else {
                        ports.join(", ")
                    }
                );
            }
            for c in &r.children {
                println!(
                    "  {:<11}{} {} (ifindex {}) in {}",
                    "child",
                    c.kind,
                    c.name,
                    c.index,
                    ns_line(&c.namespace)
                );
            }
        }
    }
    if let Some(w) = &r.mtu_mismatch {
        println!("{} {w}", paint("warning:", "33"));
    }
}

fn print_all(rows: &[VethPair]) {
    if rows.is_empty() {
        println!("no veth pairs");
        return;
    }
    let mut t = Table::new(&[
        "HOST-NS",
        "HOST-SIDE",
        "BRIDGE",
        "MTU",
        "PEER",
        "PEER-NS",
        "CONTAINER/PROCESS",
        "PEER-ADDRESSES",
    ]);
    for r in rows {
        let h = &r.host;
        let (peer, peer_ns, who, addrs, mtu) = match &r.peer {
            Some(p) => {
                let who = {
                    let c = containers(&p.namespace);
                    if !c.is_empty() {
                        c
                    } else if let Some(o) = p.namespace.processes.first() {
                        let more = p.namespace.processes.len() - 1;
                        if more > 0 {
                            format!("{}/{} +{more}", o.pid, o.comm)
                        } else {
                            format!("{}/{}", o.pid, o.comm)
                        }
                    } else {
                        "-".into()
                    }
                };
                let mtu = if p.mtu == h.mtu {
                    h.mtu.to_string()
                } else {
                    format!("{}/{}!", h.mtu, p.mtu)
                };
                (
                    format!("{}@{}", p.name, p.index),
                    if p.namespace.inode == h.namespace.inode {
                        "(same)".into()
                    } else {
                        p.namespace.label.clone()
                    },
                    who,
                    if p.addresses.is_empty() {
                        "-".into()
                    } else {
                        p.addresses.join(",")
                    },
                    mtu,
                )
            }
            None => (
                "?".into(),
                "(not found)".into(),
                "-".into(),
                "-".into(),
                h.mtu.to_string(),
            ),
        };
        t.row(vec![
            h.namespace.label.clone(),
            format!("{}@{}", h.name, h.index),
            h.master.clone().unwrap_or_else(|| "-".into()),
            mtu,
            peer,
            peer_ns,
            who,
            addrs,
        ]);
    }
    print!("{}", t.render());
}

/// Arguments of `peer`.
#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
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

/// Examples and notes for `nettool peer --help`.
pub(crate) const PEER_HELP: &str = "IFACE is looked up in the current namespace, or in --netns TARGET. A namespace TARGET\n(container:web, pid:N, a name under /run/netns) instead of IFACE gives the host-side\nveth of each of its interfaces. Non-veth interfaces are described with their master,\nparent, ports or children.\n\nExamples:\n  nettool peer veth10bbd40\n  nettool peer container:web\n  nettool peer --netns web eth0\n  nettool peer --all\n  nettool peer --all --json | jq '.[] | select(.peer.namespace.containers != [])'";
